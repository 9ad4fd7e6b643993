// A small client-side router: the studio's routes are few and flat, so the History API
// and one pattern matcher are enough.

import { createElement, useSyncExternalStore, type AnchorHTMLAttributes, type MouseEvent } from "react";

const listeners = new Set<() => void>();
const notify = () => listeners.forEach((l) => l());
if (typeof window !== "undefined") window.addEventListener("popstate", notify);

export function navigate(to: string, o: { replace?: boolean } = {}) {
  if (o.replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  notify();
  if (!o.replace) window.scrollTo(0, 0);
}

function snapshot() {
  return location.pathname + location.search;
}

/** The current path and query; re-renders on navigation. */
export function useLocation(): { path: string; query: URLSearchParams } {
  const href = useSyncExternalStore(
    (l) => {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    snapshot,
    () => "/",
  );
  const u = new URL(href, "http://x");
  return { path: u.pathname, query: u.searchParams };
}

/** `"/feed/:id"` against a path: its parameters, or null. */
export function match(pattern: string, path: string): Record<string, string> | null {
  const p = pattern.split("/").filter(Boolean);
  const s = path.split("/").filter(Boolean);
  if (p.length !== s.length) return null;
  const out: Record<string, string> = {};
  for (let i = 0; i < p.length; i++) {
    if (p[i].startsWith(":")) {
      try {
        out[p[i].slice(1)] = decodeURIComponent(s[i]);
      } catch {
        // A malformed escape (`%E0`) names nothing here.
        return null;
      }
    } else if (p[i] !== s[i]) return null;
  }
  return out;
}

export function Link(props: AnchorHTMLAttributes<HTMLAnchorElement> & { to: string }) {
  const { to, onClick, ...rest } = props;
  return createElement("a", {
    ...rest,
    href: to,
    onClick(e: MouseEvent<HTMLAnchorElement>) {
      onClick?.(e);
      // New tabs and downloads keep the browser's behaviour.
      if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
      e.preventDefault();
      navigate(to);
    },
  });
}
