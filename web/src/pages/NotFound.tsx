import { Link } from "../lib/router";

export default function NotFound() {
  return (
    <div className="mx-auto max-w-lg px-4 py-24 text-center">
      <h1 className="text-4xl font-semibold">Nothing here</h1>
      <p className="mt-3 text-muted">This page does not exist, or is not yours to see.</p>
      <Link to="/" className="mt-8 inline-block rounded-lg bg-white px-4 py-2 text-sm font-medium text-neutral-950">
        Go home
      </Link>
    </div>
  );
}
