// One client for the whole app: one socket, whatever the pages subscribe to.
// It signs in with wx.login, keeps its tokens, seqs and unsent messages in storage,
// closes the socket when the app goes to the background and reconnects on return.
const { createClient, wechat } = require("miniprogram-realtime-sdk");

const SERVER = "https://api.example.com"; // your server: add it to the request and socket domains

App({
  onLaunch() {
    this.realtime = createClient({ url: SERVER, platform: wechat(wx) });
    this.ready = this.realtime.signedIn ? Promise.resolve(this.realtime.user) : this.realtime.signIn();
    this.ready.catch((error) => wx.showToast({ title: "sign-in failed: " + error.code, icon: "none" }));
    this.realtime.on("signedOut", () => wx.showToast({ title: "signed out", icon: "none" }));
  },
});
