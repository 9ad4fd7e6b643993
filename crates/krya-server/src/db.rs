//! The database: SQLite (embedded default) or PostgreSQL, one query layer over sqlx's `Any`
//! driver, migrations kept per backend (`migrations/sqlite`, `migrations/postgres`).

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Db {
    /// Connects (creating a SQLite file if needed) and runs pending migrations.
    pub async fn connect(url: &str) -> Result<Db, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") { Backend::Postgres } else { Backend::Sqlite };
        let url = if backend == Backend::Sqlite && !url.contains("mode=") { format!("{url}?mode=rwc") } else { url.to_string() };
        let pool = AnyPoolOptions::new().max_connections(if backend == Backend::Sqlite { 1 } else { 8 }).connect(&url).await?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
            sqlx::query("PRAGMA foreign_keys = ON").execute(&pool).await?;
        }
        let db = Db { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        match self.backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&self.pool).await?,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&self.pool).await?,
        }
        Ok(())
    }

    pub async fn probe(&self) -> Result<i64, sqlx::Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE email = $1").bind("x@y").fetch_one(&self.pool).await?;
        row.try_get::<i64, _>("n")
    }
}
