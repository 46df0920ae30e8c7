// <chat-room channel="room:<id>" />: a chat room on the app's realtime client
// (getApp().realtime). Messages arrive once and in order, across reconnects;
// what is sent while offline is queued and sent once when the socket is back.
Component({
  properties: {
    channel: { type: String, value: "", observer: "join" },
  },

  data: { messages: [], draft: "", state: "", bottom: "" },

  lifetimes: {
    attached() {
      const client = getApp().realtime;
      this.client = client;
      this.offState = client.on("state", (state) => this.setData({ state }));
      this.setData({ state: client.state });
      this.join(this.data.channel);
    },
    detached() {
      if (this.offState) this.offState();
      if (this.room) this.room.unsubscribe();
    },
  },

  methods: {
    join(channel) {
      if (!this.client || !channel || (this.room && this.room.channel === channel)) return;
      if (this.room) this.room.unsubscribe();
      this.setData({ messages: [] });
      this.room = this.client.subscribe(channel, {
        message: (m) => this.show(m),
        error: (error) => wx.showToast({ title: error.code, icon: "none" }),
      }, { last: 30 });
    },

    show(m) {
      const me = this.client.user && this.client.user.id;
      const message = { seq: m.seq, from: m.from.slice(-6), text: m.data.text, mine: m.from === me };
      this.setData({ ["messages[" + this.data.messages.length + "]"]: message, bottom: "m" + m.seq });
    },

    onInput(event) {
      this.setData({ draft: event.detail.value });
    },

    send() {
      const text = this.data.draft.trim();
      if (!text) return;
      this.setData({ draft: "" });
      return this.client.publish(this.data.channel, { text }).catch((error) => {
        wx.showToast({ title: error.code === "queue_full" ? "too many unsent messages" : error.code, icon: "none" });
      });
    },
  },
});
