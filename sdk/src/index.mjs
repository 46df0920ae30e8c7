// miniprogram-realtime-sdk: the client of miniprogram-realtime (README.md).
export { RealtimeClient, createClient } from "./client.mjs";
export { browser, detect, miniProgram, taro, uniApp, wechat } from "./platforms.mjs";
export { SdkError } from "./util.mjs";
