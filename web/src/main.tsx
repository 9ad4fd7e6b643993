import "./app.css";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { events, generate, session, toasts } from "./app";
import { App } from "./App";

// The event stream follows the session: open while signed in.
session.subscribe((s, prev) => {
  if (s.status === prev.status) return;
  if (s.status === "signed-in") events.getState().connect();
  else events.getState().disconnect();
  // The next person on this browser sees nothing of the last one's work.
  if (s.status === "signed-out" && prev.status === "signed-in") generate.getState().reset();
});
session
  .getState()
  .load()
  .catch((e) => toasts.getState().error(e, "Cannot check your session"));

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
