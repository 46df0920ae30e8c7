// WeChat's /sns/jscode2session on loopback, answering as tests/fake_wechat.py does:
// `ok-<openid>` signs in; invalid/used/limited/blocked/busy-always answer WeChat's errcodes.
import { createServer } from "node:http";

const ERRORS = { invalid: 40029, used: 40163, limited: 45011, blocked: 40226, "busy-always": -1 };

export function startFakeWeChat(appid = "wx-test-appid", secret = "wx-test-secret") {
  const calls = [];
  const server = createServer((request, response) => {
    const url = new URL(request.url, "http://fake");
    const args = Object.fromEntries(url.searchParams);
    calls.push([url.pathname, args]);
    const answer = (payload) => {
      response.writeHead(200, { "Content-Type": "text/plain" }); // as WeChat: clients must not rely on the type
      response.end(JSON.stringify(payload));
    };
    if (url.pathname !== "/sns/jscode2session") {
      response.writeHead(404);
      return response.end();
    }
    if (args.appid !== appid || args.secret !== secret) return answer({ errcode: 40013, errmsg: "invalid appid" });
    const code = args.js_code || "";
    if (code in ERRORS) return answer({ errcode: ERRORS[code], errmsg: "fake error" });
    const openid = code.replace(/^ok-/, "");
    answer({ openid: "openid-" + openid, session_key: "FAKE-SESSION-KEY-must-never-leak", unionid: "union-" + openid });
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({
        appid, secret, calls, url: `http://127.0.0.1:${server.address().port}`,
        close: () => new Promise((done) => server.close(done)),
      });
    });
  });
}
