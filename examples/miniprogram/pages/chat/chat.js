// Picks a room (created here, or given by id, or by a share link ?room=) and shows the chat component.
const app = getApp();

Page({
  data: { channel: "" },

  onLoad(query) {
    if (query.room) this.setData({ channel: "room:" + query.room });
  },

  async createRoom() {
    await app.ready;
    const room = await app.realtime.api("POST", "/api/v1/rooms", { name: "chat", public: true });
    this.setData({ channel: "room:" + room.id });
  },

  joinRoom(event) {
    const id = event.detail.value.trim();
    if (id) this.setData({ channel: "room:" + id });
  },

  onShareAppMessage() {
    return { title: "Join my room", path: "/pages/chat/chat?room=" + this.data.channel.slice(5) };
  },
});
