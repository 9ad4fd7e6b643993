//! The web studio (`web/`, TypeScript + React), built by `build.rs` with npm and embedded
//! here as bytes, so the one `krya` binary serves it.
//!
//! `build.rs` runs `npm ci` when `web/node_modules` is missing or older than
//! `package-lock.json`, then `npm run build` (type check + Vite) into `OUT_DIR/dist`, and
//! lists every file it made. It reruns only when something under `web/` changes. With
//! `KRYA_SKIP_WEB=1` it builds nothing and `FILES` is empty: the server then serves the API
//! alone and says so at `/`.

include!(concat!(env!("OUT_DIR"), "/files.rs"));

#[cfg(test)]
mod tests {
    #[test]
    fn index_references_built_assets() {
        if std::env::var_os("KRYA_SKIP_WEB").is_some() {
            return;
        }
        let index = super::FILES
            .iter()
            .find(|(p, _)| *p == "index.html")
            .map(|(_, b)| std::str::from_utf8(b).unwrap())
            .expect("index.html is built");
        // Every asset the page loads is embedded.
        for part in index.split('"').filter(|s| s.starts_with("/assets/")) {
            assert!(
                super::FILES.iter().any(|(p, _)| format!("/{p}") == part),
                "{part} is referenced by index.html but not embedded"
            );
        }
        assert!(index.contains("/assets/"), "{index}");
    }
}
