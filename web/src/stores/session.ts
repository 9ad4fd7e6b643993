// Who is signed in. The tokens themselves are HttpOnly cookies; this store only knows the
// user and whether the session is still being checked.

import { createStore } from "zustand/vanilla";
import type { ApiClient } from "../api/client";
import type { User } from "../api/types";

export interface SessionState {
  status: "loading" | "signed-in" | "signed-out";
  user: User | null;
  /** Asks the server who this browser is (on start-up). */
  load(): Promise<void>;
  login(email: string, password: string): Promise<User>;
  register(email: string, password: string, name: string, invite?: string): Promise<User>;
  /** The first administrator, through the server's setup link. */
  setup(token: string, email: string, password: string, name: string): Promise<User>;
  logout(): Promise<void>;
  /** Re-reads the user (credits change with every generation). */
  refreshUser(): Promise<void>;
  /** The server said the session is gone. */
  signedOut(): void;
}

export function createSessionStore(api: ApiClient) {
  return createStore<SessionState>()((set, get) => ({
    status: "loading",
    user: null,
    async load() {
      try {
        const s = await api.session();
        // An expired access token with a live refresh cookie: renew, then ask again.
        const user = s.user ?? (s.refreshable && (await api.refresh()) === "ok" ? await api.me() : null);
        set(user ? { status: "signed-in", user } : { status: "signed-out", user: null });
      } catch (e) {
        set({ status: "signed-out", user: null });
        // Only "not signed in" is an answer; anything else is worth telling.
        if ((e as { status?: number }).status !== 401) throw e;
      }
    },
    async login(email, password) {
      const s = await api.login(email, password);
      set({ status: "signed-in", user: s.user });
      return s.user;
    },
    async register(email, password, name, invite) {
      const s = await api.register(email, password, name, invite);
      set({ status: "signed-in", user: s.user });
      return s.user;
    },
    async setup(token, email, password, name) {
      const s = await api.setup(token, email, password, name);
      set({ status: "signed-in", user: s.user });
      return s.user;
    },
    async logout() {
      try {
        await api.logout();
      } finally {
        set({ status: "signed-out", user: null });
      }
    },
    async refreshUser() {
      if (get().status !== "signed-in") return;
      set({ user: await api.me() });
    },
    signedOut() {
      set({ status: "signed-out", user: null });
    },
  }));
}
