// Types of miniprogram-realtime-sdk (checked with tsc against miniprogram-api-typings).

/** A message, wherever it appears: in pushes, subscribe replies and history. */
export interface Message<T = Record<string, unknown>> {
  channel: string;
  seq: number;
  id: string;
  from: string;
  data: T;
  ts: string;
  cid?: string;
}

export interface PublishAck {
  seq: number;
  id: string;
  ts: string;
}

export interface User {
  id: string;
  created_at?: string;
  [key: string]: unknown;
}

export type State = "disconnected" | "connecting" | "connected";

/** An error of the SDK or of the server; `code` is the server's (`forbidden`, `rate_limited`...)
 * or the SDK's (`network`, `disconnected`, `queue_full`, `payload_too_large`, `signed_out`, `timeout`, `closed`). */
export class SdkError extends Error {
  code: string;
  status?: number;
  details?: Array<{ path: string; message: string }>;
  channel?: string;
  cid?: string;
  key?: string;
  /** On an `error` event: the SDK tries again by itself (a subscribe answered unavailable, rate_limited, internal). */
  willRetry?: boolean;
  constructor(code: string, message?: string, extra?: Record<string, unknown>);
}

export interface SocketHandlers {
  open(): void;
  message(text: string): void;
  close(code: number, reason: string): void;
  error(message: string): void;
}

export interface UploadOptions {
  url: string;
  headers: Record<string, string>;
  filePath?: string;
  file?: unknown;
  name: string;
  formData?: Record<string, string>;
  onProgress?: (progress: Progress) => void;
}

export interface Progress {
  progress: number;
  sent: number;
  total: number;
}

/** What the client needs of a platform; wechat(), uniApp(), taro() and browser() make one. */
export interface Platform {
  name: string;
  maxRequests: number;
  connect(url: string, token: string, on: SocketHandlers): { send(text: string): void; close(code: number, reason: string): void };
  request(options: { method: string; url: string; headers: Record<string, string>; body?: unknown }): Promise<{ status: number; data: any }>;
  upload(options: UploadOptions): Promise<{ status: number; data: any }>;
  login?(): Promise<string>;
  storage: { get(key: string): string | null; set(key: string, value: string): void; remove(key: string): void };
  watch(on: { show(): void; hide(): void; network(online: boolean): void }): () => void;
}

/** The calls of `wx` the SDK uses (uni-app's `uni` and Taro's `Taro` mirror them). */
export type MiniProgramApi = Pick<WechatMiniprogram.Wx, "connectSocket" | "request" | "uploadFile" | "login" |
  "getStorageSync" | "setStorageSync" | "removeStorageSync"> & Partial<Pick<WechatMiniprogram.Wx, "onAppShow" |
  "offAppShow" | "onAppHide" | "offAppHide" | "onNetworkStatusChange" | "offNetworkStatusChange">>;

export function wechat(wx: MiniProgramApi): Platform;
export function uniApp(uni: any): Platform;
export function taro(taro: any): Platform;
export function miniProgram(api: any, name?: string): Platform;
export function browser(options?: {
  pauseWhenHidden?: boolean;
  storage?: { getItem(key: string): string | null; setItem(key: string, value: string): void; removeItem(key: string): void };
  WebSocket?: any;
  fetch?: any;
}): Platform;
export function detect(): Platform;

export interface ClientOptions {
  /** The server's base URL: https://api.example.com */
  url: string;
  /** Found by detect() when absent: wx, then uni, then a browser. */
  platform?: Platform;
  /** Prefix of the storage keys (default "mpr:"). */
  storagePrefix?: string;
  /** Reconnect delay: min(reconnectMax, reconnectBase × 2^attempt) × random(0.5..1.5) ms (500, 30000). */
  reconnectBase?: number;
  reconnectMax?: number;
  /** A connection alive this long (ms, 15000) resets the attempt count. */
  healthyAfter?: number;
  /** Silence (ms, 20000) after which a `ping` goes; `pingTimeout` (10000) more and the socket is dropped. */
  pingInterval?: number;
  pingTimeout?: number;
  openTimeout?: number;
  commandTimeout?: number;
  /** Publishes waiting at most (200): past it publish() rejects with `queue_full`. */
  outboxLimit?: number;
  /** Bytes of waiting publishes at most (900 KiB: WeChat stores 1 MB under one key): past it `queue_full`. */
  outboxBytes?: number;
  /** Bytes of records waiting for an answer at most (900 KiB, one storage key too): past it createRecord() rejects with `queue_full`. */
  recordsBytes?: number;
  /** Publishes in flight at once (8). */
  publishWindow?: number;
  /** Retries of HTTP calls (records, uploads) after network failures, 5xx and 429 (3). */
  requestRetries?: number;
  retryBase?: number;
  /** Sign in again with wx.login when the session is gone (true). */
  autoSignIn?: boolean;
}

export interface SubscriptionHandlers<T = Record<string, unknown>> {
  message?(message: Message<T>): void;
  join?(event: { channel: string; user: string }): void;
  leave?(event: { channel: string; user: string }): void;
  error?(error: SdkError): void;
  /** More than RECOVERY_MAX were missed: the newest arrived; page older ones with history({before: oldest}). */
  recovery?(event: { channel: string; recovered: false; oldest: number }): void;
}

export interface Subscription {
  channel: string;
  unsubscribe(): void;
  history(options?: HistoryOptions): Promise<HistoryPage>;
  presence(): Promise<Presence>;
}

export interface HistoryOptions {
  before?: number;
  after?: number;
  limit?: number;
}

export interface HistoryPage {
  messages: Message[];
  has_more: boolean;
}

export interface Presence {
  users: string[];
  count: number;
}

export interface Events {
  state: State;
  connecting: { attempt: number };
  connected: {};
  disconnected: { code: number; reason: string; willReconnect: boolean };
  reconnecting: { attempt: number; delay: number };
  message: Message;
  join: { channel: string; user: string };
  leave: { channel: string; user: string };
  subscribed: { channel: string; seq: number };
  recovery: { channel: string; recovered: false; oldest: number };
  published: PublishAck & { cid: string; channel: string };
  record: { key: string; kind: string; result: any };
  tokenRefreshed: { expiresIn: number };
  signedOut: { reason: string };
  error: SdkError;
}

export class RealtimeClient {
  constructor(options: ClientOptions);
  readonly state: State;
  readonly user: User | null;
  readonly signedIn: boolean;
  on<K extends keyof Events>(event: K, listener: (payload: Events[K]) => void): () => void;
  off<K extends keyof Events>(event: K, listener: (payload: Events[K]) => void): void;
  signIn(options?: { dev?: string; code?: string }): Promise<User>;
  signOut(): Promise<void>;
  connect(): void;
  close(): void;
  subscribe<T = Record<string, unknown>>(channel: string, handlers?: SubscriptionHandlers<T>, options?: { last?: number }): Subscription;
  unsubscribe(channel: string): void;
  publish(channel: string, data: Record<string, unknown>, options?: { cid?: string }): Promise<PublishAck>;
  history(channel: string, options?: HistoryOptions): Promise<HistoryPage>;
  presence(channel: string): Promise<Presence>;
  createRecord<T = any>(kind: string, object: Record<string, unknown>, options?: { key?: string }): Promise<T>;
  /** A Mini Program's temp file path, or a browser's Blob/File. Sent with an Idempotency-Key
   * (`idempotencyKey`: 1 to 64 of A-Z a-z 0-9 _ . : -; one is made per call without it),
   * reused on its retries: a retry after a lost answer stores the file once. */
  upload(file: string | object, options?: {
    formData?: Record<string, string>; onProgress?: (p: Progress) => void; retries?: number; idempotencyKey?: string;
  }): Promise<{
    id: string; url: string; filename: string; size: number; content_type: string; sha256: string; created_at: string;
  }>;
  api<T = any>(method: string, path: string, body?: unknown): Promise<T>;
}

export function createClient(options: ClientOptions): RealtimeClient;
