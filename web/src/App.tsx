import { usePageHeading } from "./lib/heading";
import { Component, lazy, Suspense, useEffect, type ReactNode } from "react";
import { session, use } from "./app";
import { Header } from "./components/Header";
import { Toasts } from "./components/Toasts";
import { Skeleton } from "./components/ui";
import { match, navigate, useLocation } from "./lib/router";
import { toolAt } from "./tools";

// One chunk per page (the tools' pages are in tools.tsx).
const Login = lazy(() => import("./pages/Login"));
const Dashboard = lazy(() => import("./pages/Dashboard"));
const Feed = lazy(() => import("./pages/Feed"));
const FeedDetail = lazy(() => import("./pages/FeedDetail"));
const Profile = lazy(() => import("./pages/Profile"));
const Settings = lazy(() => import("./pages/Settings"));
const Admin = lazy(() => import("./pages/Admin"));
const NotFound = lazy(() => import("./pages/NotFound"));

/** A page that fails to load or render (a chunk gone after an upgrade, a bug) says so and
 * offers a reload, instead of leaving a blank window. */
class PageBoundary extends Component<{ children: ReactNode }, { error: Error | null }> {
  state = { error: null as Error | null };
  static getDerivedStateFromError(error: Error) {
    return { error };
  }
  render() {
    if (!this.state.error) return this.props.children;
    return (
      <div role="alert" className="mx-auto max-w-lg px-4 py-20 text-center">
        <h1 className="text-2xl font-semibold">This page could not be shown</h1>
        <p className="mt-3 text-sm text-muted">{this.state.error.message}</p>
        <button type="button" onClick={() => location.reload()} className="mt-6 rounded-lg bg-white px-4 py-2 text-sm font-medium text-neutral-950">
          Reload
        </button>
      </div>
    );
  }
}

function PageSkeleton() {
  return (
    <div className="mx-auto max-w-6xl space-y-4 p-6" aria-busy="true">
      <Skeleton className="h-10 w-1/3" />
      <Skeleton className="h-64 w-full" />
    </div>
  );
}

/** Pages of one's own: signed-out visitors go to /login and come back after. */
function SignedIn({ children }: { children: ReactNode }) {
  const status = use(session, (s) => s.status);
  const { path, query } = useLocation();
  useEffect(() => {
    if (status === "signed-out") {
      const q = query.toString();
      navigate(`/login?next=${encodeURIComponent(path + (q ? `?${q}` : ""))}`, { replace: true });
    }
  }, [status, path, query]);
  if (status !== "signed-in") return <PageSkeleton />;
  return <>{children}</>;
}

function Home() {
  const status = use(session, (s) => s.status);
  useEffect(() => {
    if (status !== "loading") navigate(status === "signed-in" ? "/image" : "/feed", { replace: true });
  }, [status]);
  return <PageSkeleton />;
}

function route(path: string): ReactNode {
  if (path === "/") return <Home />;
  // Sign in; `/register?invite=…` and the server's `/setup?token=…` link open it too.
  if (path === "/login" || path === "/register" || path === "/setup") return <Login />;
  const tool = toolAt(path);
  if (tool) {
    const Page = tool.page;
    return tool.signedIn ? (
      <SignedIn>
        <Page />
      </SignedIn>
    ) : (
      <Page />
    );
  }
  if (path === "/app")
    return (
      <SignedIn>
        <Dashboard />
      </SignedIn>
    );
  if (path === "/settings")
    return (
      <SignedIn>
        <Settings />
      </SignedIn>
    );
  if (path === "/admin")
    return (
      <SignedIn>
        <Admin />
      </SignedIn>
    );
  if (path === "/feed") return <Feed />;
  const item = match("/feed/:id", path);
  if (item) return <FeedDetail key={item.id} id={item.id} />;
  const profile = match("/profile/:handle", path);
  if (profile) return <Profile key={profile.handle} handle={profile.handle} />;
  return <NotFound />;
}

export function App() {
  const { path } = useLocation();
  usePageHeading(path);
  return (
    <div className="flex min-h-screen flex-col">
      <a href="#main" className="sr-only focus:not-sr-only focus:absolute focus:left-2 focus:top-2 focus:z-50 focus:rounded focus:bg-white focus:px-3 focus:py-2 focus:text-neutral-950">
        Skip to content
      </a>
      <Header />
      <main id="main" className="flex-1">
        {/* Keyed by path: a page left and come back to starts afresh. */}
        <PageBoundary key={path}>
          <Suspense fallback={<PageSkeleton />}>{route(path)}</Suspense>
        </PageBoundary>
      </main>
      <Toasts />
    </div>
  );
}
