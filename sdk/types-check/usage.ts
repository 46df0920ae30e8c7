// Compiled by `tsc -p tsconfig.json` (no output): the declarations against a Mini Program's `wx`.
import { createClient, wechat, type Message, type PublishAck } from "../index";

const client = createClient({ url: "https://api.example.com", platform: wechat(wx) });
client.on("disconnected", (event) => console.log(event.code, event.reason, event.willReconnect));
client.on("reconnecting", ({ attempt, delay }) => console.log(attempt, delay));
const room = client.subscribe<{ text: string }>("room:lobby", {
  message(message: Message<{ text: string }>) {
    console.log(message.seq, message.data.text);
  },
  recovery({ oldest }) {
    room.history({ before: oldest, limit: 50 }).then((page) => console.log(page.messages.length, page.has_more));
  },
}, { last: 20 });
const ack: Promise<PublishAck> = client.publish("room:lobby", { text: "hi" });
ack.then(({ seq, id, ts }) => console.log(seq, id, ts));
client.createRecord("feedback", { name: "Li Lei", rating: 5, message: "great" }, { key: "form-1" });
wx.chooseMedia({
  count: 1,
  success(choice) {
    client.upload(choice.tempFiles[0].tempFilePath, { onProgress: (p) => console.log(p.progress) });
  },
});
