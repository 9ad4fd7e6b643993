// Loading what a page shows: the value, or the error to show with a retry. State changes
// only when an answer comes (never synchronously in the effect), an answer for a key
// since replaced is dropped, and `reload` asks again.

import { useEffect, useEffectEvent, useState } from "react";
import { asApiError, type ApiError } from "../api/client";

export interface Loaded<T> {
  data: T | null;
  error: ApiError | null;
  /** Asks again (a retry button). */
  reload(): void;
  /** Changes the loaded value in place (after an edit the server confirmed). */
  update(f: (d: T) => T): void;
}

/** Loads `fetch()` now and again whenever `key` changes. */
export function useLoad<T>(fetch: () => Promise<T>, key: unknown = null): Loaded<T> {
  const [state, setState] = useState<{ data: T | null; error: ApiError | null }>({ data: null, error: null });
  const [attempt, setAttempt] = useState(0);
  const run = useEffectEvent(fetch);
  useEffect(() => {
    let current = true;
    run().then(
      (data) => current && setState({ data, error: null }),
      (e) => current && setState((s) => ({ data: s.data, error: asApiError(e) })),
    );
    return () => {
      current = false;
    };
  }, [key, attempt]);
  return {
    ...state,
    reload: () => {
      setState((s) => ({ ...s, error: null }));
      setAttempt((a) => a + 1);
    },
    update: (f) => setState((s) => (s.data === null ? s : { ...s, data: f(s.data) })),
  };
}
