// A live feed (feed:<name>, published by the server API): the newest first,
// resumed after the last seq seen when the app comes back, even after WeChat destroyed it.
const app = getApp();
const CHANNEL = "feed:news";

Page({
  data: { items: [], state: "", gap: 0 },

  onLoad() {
    const client = app.realtime;
    this.offState = client.on("state", (state) => this.setData({ state }));
    this.feed = client.subscribe(CHANNEL, {
      message: (m) => this.setData({ items: [{ seq: m.seq, text: m.data.text || JSON.stringify(m.data) }, ...this.data.items].slice(0, 200) }),
      recovery: (e) => this.setData({ gap: e.oldest }),
    }, { last: 50 });
  },

  async older() {
    const page = await this.feed.history({ before: this.data.gap, limit: 50 });
    const older = page.messages.reverse().map((m) => ({ seq: m.seq, text: m.data.text || JSON.stringify(m.data) }));
    this.setData({ items: [...this.data.items, ...older], gap: page.has_more && older.length ? older[older.length - 1].seq : 0 });
  },

  onUnload() {
    this.offState();
    this.feed.unsubscribe();
  },
});
