// The global navigation (seed §4.1). Only features that exist are listed: a menu whose
// entries are all still to come is not shown at all.

import { useState } from "react";
import { session, toasts, use } from "../app";
import { Link, navigate, useLocation } from "../lib/router";
import { TOOLS, type Tool } from "../tools";
import { Menu, menuItem } from "./ui";

interface Entry {
  label: string;
  to: string;
  hint: string;
}

/** The entries of one navigation menu, from the tools registry. */
function entries(menu: Tool["menu"]): Entry[] {
  return TOOLS.filter((t) => t.menu === menu).map((t) => ({ label: t.label, to: t.path, hint: t.hint }));
}

function EntryMenu({ label, entries }: { label: string; entries: Entry[] }) {
  if (entries.length === 0) return null;
  return (
    <Menu
      label={
        <>
          {label}
          <span aria-hidden className="text-neutral-500">
            ▾
          </span>
        </>
      }
    >
      {(close) =>
        entries.map((e) => (
          <Link key={e.to} to={e.to} role="menuitem" className={menuItem} onClick={close}>
            <span className="flex flex-col">
              <span>{e.label}</span>
              <span className="text-xs text-muted">{e.hint}</span>
            </span>
          </Link>
        ))
      }
    </Menu>
  );
}

function Search() {
  const { query, path } = useLocation();
  const [q, setQ] = useState(path === "/feed" ? (query.get("q") ?? "") : "");
  return (
    <form
      role="search"
      className="hidden md:block"
      onSubmit={(e) => {
        e.preventDefault();
        navigate(q.trim() ? `/feed?q=${encodeURIComponent(q.trim())}` : "/feed");
      }}
    >
      <input
        type="search"
        aria-label="Search the gallery"
        placeholder="Search prompts…"
        value={q}
        onChange={(e) => setQ(e.target.value)}
        className="h-9 w-64 rounded-lg border border-line bg-surface px-3 text-sm placeholder:text-neutral-500 focus:border-accent focus:outline-none"
      />
    </form>
  );
}

function Account() {
  const status = use(session, (s) => s.status);
  const user = use(session, (s) => s.user);
  if (status === "loading") return <div className="h-9 w-9 animate-pulse rounded-full bg-neutral-800" />;
  if (!user)
    return (
      <Link to="/login" className="inline-flex h-9 items-center rounded-lg bg-white px-4 text-sm font-medium text-neutral-950 hover:bg-neutral-200">
        Sign in
      </Link>
    );
  return (
    <Menu
      align="right"
      ariaLabel="Account"
      buttonClass="px-1"
      label={
        <span className="flex items-center gap-2">
          <span className="hidden text-xs text-muted sm:inline" data-testid="credits">
            {user.credits_remaining} credits
          </span>
          <span className="brand-gradient grid h-8 w-8 place-items-center rounded-full text-sm font-bold text-neutral-950">
            {user.name.slice(0, 1).toUpperCase()}
          </span>
        </span>
      }
    >
      {(close) => (
        <>
          <div className="border-b border-line px-3 py-2">
            <div className="text-sm font-medium">{user.name}</div>
            <div className="text-xs text-muted">
              @{user.handle} · {user.credits_remaining} credits
            </div>
          </div>
          <Link to="/app" role="menuitem" className={menuItem} onClick={close}>
            My generations
          </Link>
          <Link to={`/profile/${user.handle}`} role="menuitem" className={menuItem} onClick={close}>
            Public profile
          </Link>
          <Link to="/settings" role="menuitem" className={menuItem} onClick={close}>
            Settings
          </Link>
          {user.is_admin && (
            <Link to="/admin" role="menuitem" className={menuItem} onClick={close}>
              Moderation
            </Link>
          )}
          <button
            type="button"
            role="menuitem"
            className={menuItem}
            onClick={() => {
              close();
              session
                .getState()
                .logout()
                .catch((e) => toasts.getState().error(e, "Signing out did not reach the server; close the browser to be sure"))
                .finally(() => navigate("/login"));
            }}
          >
            Sign out
          </button>
        </>
      )}
    </Menu>
  );
}

export function Header() {
  return (
    <header className="sticky top-0 z-30 border-b border-line bg-neutral-950/85 backdrop-blur">
      <nav aria-label="Main" className="mx-auto flex h-14 max-w-[1600px] items-center gap-1 px-3 sm:gap-2 sm:px-5">
        <Link to="/" className="mr-1 flex items-center gap-2 rounded-lg px-1 font-semibold tracking-tight sm:mr-3">
          <img src="/favicon.svg" alt="" className="h-7 w-7" />
          {/* On a phone the logo alone: the menus need the width. */}
          <span className="sr-only text-lg sm:not-sr-only">Krya</span>
        </Link>
        <EntryMenu label="Generate" entries={entries("generate")} />
        <EntryMenu label="Tools" entries={entries("tools")} />
        <Link to="/feed" className="inline-flex h-9 items-center rounded-lg px-2 text-sm text-neutral-200 hover:bg-neutral-800 sm:px-3">
          Gallery
        </Link>
        <div className="flex-1" />
        <Search />
        <Account />
      </nav>
    </header>
  );
}
