import { useEffect, useState } from "react";
import { asApiError, type ApiError } from "../api/client";
import { api, session } from "../app";
import { Button, Field, Input, Spinner } from "../components/ui";
import { navigate, useLocation } from "../lib/router";

/** Where to go after signing in: only this site's own paths. */
function nextPath(q: URLSearchParams): string {
  const n = q.get("next") ?? "";
  try {
    const u = new URL(n, location.origin);
    if (n.startsWith("/") && u.origin === location.origin) return u.pathname + u.search;
  } catch {
    // Not a path at all.
  }
  return "/image";
}

type Mode = "login" | "register" | "setup";

export default function Login() {
  const { path, query } = useLocation();
  const token = path === "/setup" ? query.get("token") : null;
  const invite = query.get("invite") ?? undefined;
  const [mode, setMode] = useState<Mode>(token ? "setup" : path === "/register" || query.get("mode") === "register" ? "register" : "login");
  // How this server takes new accounts: open, by invite, or closed.
  const [policy, setPolicy] = useState<"open" | "invite" | "closed">("open");
  useEffect(() => {
    api.registration().then(
      (r) => setPolicy(r.registration),
      () => undefined,
    );
  }, []);
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [name, setName] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);

  const fieldError = (f: string) => (error?.field === f ? error.detail : null);
  const general = error && !["email", "password", "name"].includes(error.field ?? "") ? error.message : null;
  const heading = mode === "login" ? "Welcome back" : mode === "setup" ? "Set up this server" : "Create your account";
  const lede =
    mode === "login"
      ? "Sign in to generate, save and share."
      : mode === "setup"
        ? "This account will be the server's administrator."
        : policy === "invite" && !invite
          ? "This server takes new accounts by invite: open the invite link you were given."
          : "Free to use on this server; new accounts get daily credits.";
  // Modes to switch between: no registering where it is closed; setup stands alone.
  const modes: Mode[] = mode === "setup" ? [] : policy === "closed" ? ["login"] : ["login", "register"];

  async function submit(e: React.FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (mode === "login") await session.getState().login(email, password);
      else if (mode === "setup" && token) await session.getState().setup(token, email, password, name);
      else await session.getState().register(email, password, name, invite);
      navigate(nextPath(query), { replace: true });
    } catch (err) {
      setError(asApiError(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="mx-auto flex max-w-md flex-col px-4 py-12 sm:py-20">
      <h1 className="text-3xl font-semibold tracking-tight">{heading}</h1>
      <p className="mt-2 text-sm text-muted" data-testid="login-lede">
        {lede}
      </p>
      {modes.length > 1 && (
      <div role="tablist" aria-label="Sign in or register" className="mt-8 grid grid-cols-2 rounded-xl border border-line bg-surface p-1">
        {modes.map((m) => (
          <button
            key={m}
            type="button"
            role="tab"
            aria-selected={mode === m}
            onClick={() => {
              setMode(m);
              setError(null);
            }}
            className={`h-9 rounded-lg text-sm ${mode === m ? "bg-raised text-white" : "text-muted hover:text-white"}`}
          >
            {m === "login" ? "Sign in" : "Register"}
          </button>
        ))}
      </div>
      )}
      <form onSubmit={submit} className="mt-6 flex flex-col gap-4" noValidate>
        {mode !== "login" && (
          <Field label="Name" error={fieldError("name")}>
            {(id, d) => (
              <Input id={id} aria-describedby={d} aria-invalid={!!fieldError("name")} autoComplete="name" value={name} onChange={(e) => setName(e.target.value)} required />
            )}
          </Field>
        )}
        <Field label="Email" error={fieldError("email")}>
          {(id, d) => (
            <Input
              id={id}
              type="email"
              aria-describedby={d}
              aria-invalid={!!fieldError("email")}
              autoComplete="email"
              value={email}
              onChange={(e) => setEmail(e.target.value)}
              required
            />
          )}
        </Field>
        <Field label="Password" error={fieldError("password")} hint={mode !== "login" ? "At least 8 characters." : undefined}>
          {(id, d) => (
            <Input
              id={id}
              type="password"
              aria-describedby={d}
              aria-invalid={!!fieldError("password")}
              autoComplete={mode === "login" ? "current-password" : "new-password"}
              value={password}
              onChange={(e) => setPassword(e.target.value)}
              required
            />
          )}
        </Field>
        {general && (
          <p role="alert" className="rounded-lg border border-red-900 bg-red-950/50 px-3 py-2 text-sm text-red-200" data-testid="form-error">
            {general}
          </p>
        )}
        <Button type="submit" variant="primary" size="lg" disabled={busy}>
          {busy && <Spinner />}
          {mode === "login" ? "Sign in" : mode === "setup" ? "Create the administrator" : "Create account"}
        </Button>
      </form>
    </div>
  );
}
