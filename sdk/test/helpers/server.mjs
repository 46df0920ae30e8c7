// The real server (`python run.py`) in a child process, on a data directory of its
// own, with a fake WeChat API for sign-in. Stop it with SIGTERM and start it again
// on the same directory and port.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { startFakeWeChat } from "./fake_wechat.mjs";

const REPO = fileURLToPath(new URL("../../..", import.meta.url));

function python() {
  if (process.env.SDK_TEST_PYTHON) return process.env.SDK_TEST_PYTHON;
  const venv = join(REPO, ".venv/bin/python");
  return existsSync(venv) ? venv : "python3";
}

export class Server {
  constructor(env = {}) {
    this.env = env; // extra settings (ACCESS_TOKEN_TTL...)
    this.dataDir = mkdtempSync(join(tmpdir(), "sdk-test-")); // DATA_DIR: the embedded store and the JWT secret
    this.port = 0; // chosen at the first start, kept across restarts
    this.child = null; // the run.py process
    this.output = ""; // what it printed, for failures
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    if (!this.wechat) this.wechat = await startFakeWeChat();
    const env = {
      ...process.env, APP_ENV: "development", DATA_DIR: this.dataDir, WECHAT_APPID: this.wechat.appid,
      WECHAT_SECRET: this.wechat.secret, WECHAT_API_BASE: this.wechat.url, API_KEYS: "sdk-test-key",
      ...this.env,
    };
    delete env.MONGO_URI;
    const child = spawn(python(), ["run.py", "--port", String(this.port)], { cwd: REPO, env, stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    this.exited = exited;
    const started = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("run.py did not start in 30 s:\n" + this.output)), 30000);
      const read = (chunk) => {
        this.output += chunk;
        const found = /serving on https?:\/\/[^:]+:(\d+)\//.exec(this.output);
        if (found) {
          clearTimeout(timer);
          this.port = Number(found[1]);
          resolve();
        }
      };
      child.stdout.setEncoding("utf8").on("data", read);
      child.stderr.setEncoding("utf8").on("data", (chunk) => (this.output += chunk));
      exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`run.py exited with ${code}:\n${this.output}`));
      });
    });
    await started;
    return this;
  }

  /** SIGTERM, and waits for the process to exit (it closes sockets with 1001). */
  async stop() {
    if (!this.child) return;
    const child = this.child;
    this.child = null;
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 20000);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }

  async close() {
    await this.stop();
    if (this.wechat) await this.wechat.close();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** How many documents of `collection` the server's database holds, read with pymongo
   * from the embedded store run.py started (its port is in run.py's log). */
  count(collection) {
    const port = /embedded store started[^\n]*"port": (\d+)/.exec(this.output)[1];
    const script = "import sys, pymongo; print(pymongo.MongoClient(sys.argv[1]).miniprogram[sys.argv[2]].count_documents({}))";
    return Number(execFileSync(python(), ["-c", script, `mongodb://127.0.0.1:${port}/`, collection], { encoding: "utf8" }));
  }

  /** Calls the server API with the test's X-API-Key. */
  async serverApi(method, path, body) {
    const response = await fetch(this.url + path, {
      method, headers: { "X-API-Key": "sdk-test-key", "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, body: await response.json() };
  }
}
