//! The database: SQLite (embedded default) or PostgreSQL, one query layer over sqlx's `Any`
//! driver. Migrations are one list: a file in `migrations/shared` runs on both databases,
//! and only where the SQL differs is there one per backend (`migrations/sqlite`,
//! `migrations/postgres`).

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

/// A migration whose SQL is the same on both databases.
macro_rules! shared {
    ($version:literal, $name:literal) => {
        [(
            $version,
            $name,
            include_str!(concat!("../../migrations/shared/", $name, ".sql")),
        ); 2]
    };
}

/// A migration with SQL of its own for each database: `[SQLite, PostgreSQL]`.
macro_rules! per_backend {
    ($version:literal, $name:literal) => {
        [
            (
                $version,
                $name,
                include_str!(concat!("../../migrations/sqlite/", $name, ".sql")),
            ),
            (
                $version,
                $name,
                include_str!(concat!("../../migrations/postgres/", $name, ".sql")),
            ),
        ]
    };
}

/// Every migration in order. A file's text is its checksum in `_sqlx_migrations`: an
/// applied migration's file is never edited, only followed by a new one.
const MIGRATIONS: [[(i64, &str, &str); 2]; 12] = [
    per_backend!(1, "0001_accounts"),
    per_backend!(2, "0002_sessions"),
    shared!(3, "0003_api_keys"),
    per_backend!(4, "0004_generations"),
    shared!(5, "0005_refresh_rotation"),
    shared!(6, "0006_jobs_and_assets"),
    shared!(7, "0007_posts"),
    shared!(8, "0008_invites"),
    shared!(9, "0009_asset_use"),
    shared!(10, "0010_job_claims"),
    shared!(11, "0011_moderation"),
    shared!(12, "0012_claim_indexes"),
];

fn migrations(backend: Backend) -> Vec<sqlx::migrate::Migration> {
    let i = match backend {
        Backend::Sqlite => 0,
        Backend::Postgres => 1,
    };
    MIGRATIONS
        .iter()
        .map(|m| {
            let (version, name, sql) = m[i];
            // As `sqlx::migrate!` names them: the file name after the version.
            let description = name
                .split_once('_')
                .map_or(name, |(_, d)| d)
                .replace('_', " ");
            sqlx::migrate::Migration::new(
                version,
                description.into(),
                sqlx::migrate::MigrationType::Simple,
                sqlx::SqlStr::from_static(sql),
                false,
            )
        })
        .collect()
}

impl Db {
    /// Connects (creating a SQLite file if needed) and runs pending migrations.
    pub async fn connect(url: &str) -> Result<Db, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let url = if backend == Backend::Sqlite && !url.contains("mode=") {
            format!("{url}?mode=rwc")
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 1 } else { 8 })
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
            sqlx::query("PRAGMA foreign_keys = ON")
                .execute(&pool)
                .await?;
        }
        let db = Db { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    /// On PostgreSQL, trigram indexes for prompt search (`LOWER(prompt) LIKE '%…%'`):
    /// they need the `pg_trgm` extension, which a role without the privilege cannot create;
    /// then search works without them (a warning says so).
    pub async fn prepare_search(&self) {
        if self.backend != Backend::Postgres {
            return;
        }
        for sql in [
            // In `public`, whatever the search path: one copy per database.
            "CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public",
            "CREATE INDEX IF NOT EXISTS idx_jobs_prompt_trgm ON jobs USING gin (LOWER(prompt) public.gin_trgm_ops)",
            "CREATE INDEX IF NOT EXISTS idx_generations_prompt_trgm ON generations USING gin (LOWER(prompt) public.gin_trgm_ops)",
        ] {
            if let Err(e) = sqlx::query(sql).execute(&self.pool).await {
                tracing::warn!(error = %e, "prompt search without a trigram index (pg_trgm): {sql}");
                return;
            }
        }
    }

    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        sqlx::migrate::Migrator::with_migrations(migrations(self.backend))
            .run(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn user_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?
            .try_get::<i64, _>("n")
    }

    pub async fn handle_taken(&self, handle: &str) -> Result<bool, sqlx::Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE handle = $1")
            .bind(handle)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// Inserts a user; `Ok(false)` when the email is already registered.
    pub async fn insert_user(&self, u: &User, password_hash: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "INSERT INTO users (id, email, name, handle, password_hash, is_admin, credits_remaining, subscription_tier, created_at, updated_at, credits_day) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)",
        )
        .bind(&u.id)
        .bind(&u.email)
        .bind(&u.name)
        .bind(&u.handle)
        .bind(password_hash)
        .bind(u.is_admin as i64)
        .bind(u.credits_remaining)
        .bind(&u.subscription_tier)
        .bind(u.created_at)
        .bind(u.created_at.div_euclid(86_400))
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A user and their password hash, by email.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<(User, String)>, sqlx::Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1"
        )))
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((User::from_row(&r)?, r.try_get("password_hash")?)))
            .transpose()
    }

    pub async fn insert_session(
        &self,
        id: &str,
        user_id: &str,
        access_hash: &str,
        access_exp: i64,
        refresh_hash: &str,
        refresh_exp: i64,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO sessions (id, user_id, access_hash, access_expires_at, refresh_hash, refresh_expires_at, revoked, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
        )
        .bind(id)
        .bind(user_id)
        .bind(access_hash)
        .bind(access_exp)
        .bind(refresh_hash)
        .bind(refresh_exp)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The user an unexpired, unrevoked access token belongs to.
    pub async fn user_by_access(
        &self,
        access_hash: &str,
        now: i64,
    ) -> Result<Option<User>, sqlx::Error> {
        let cols = USER_COLUMNS
            .split(", ")
            .map(|c| format!("u.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Built only from the constant column list above.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {cols} FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.access_hash = $1 AND s.revoked = 0 AND s.access_expires_at > $2"
        )))
        .bind(access_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| User::from_row(&r)).transpose()
    }
}

impl Db {
    /// Marks a refresh token used: `Some(user_id)` for the one caller that wins a valid,
    /// unexpired, unrevoked token (single use, safe under concurrent refreshes); `Err` with
    /// the owner when the token was already used (a replay), `Ok(None)` when unknown.
    ///
    /// A token spent by rotation at most `grace` seconds ago is refused without the replay
    /// verdict: two tabs (or requests) refreshing at once send the same token, and the
    /// slower one should simply find the new session in its cookies.
    pub async fn take_refresh(
        &self,
        refresh_hash: &str,
        now: i64,
        grace: i64,
    ) -> Result<Result<Option<String>, String>, sqlx::Error> {
        let Some(row) = sqlx::query(
            "SELECT id, user_id, revoked, refresh_expires_at, rotated_at FROM sessions WHERE refresh_hash = $1",
        )
        .bind(refresh_hash)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(Ok(None));
        };
        let (id, user): (String, String) = (row.try_get("id")?, row.try_get("user_id")?);
        let just_rotated = |at: Option<i64>| grace > 0 && at.is_some_and(|t| now - t <= grace);
        if row.try_get::<i64, _>("revoked")? != 0 {
            return Ok(if just_rotated(row.try_get("rotated_at")?) {
                Ok(None)
            } else {
                Err(user)
            });
        }
        if row.try_get::<i64, _>("refresh_expires_at")? <= now {
            return Ok(Ok(None));
        }
        let done = sqlx::query(
            "UPDATE sessions SET revoked = 1, rotated_at = $2 WHERE id = $1 AND revoked = 0",
        )
        .bind(&id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        // Lost a race with a concurrent refresh of the same token: that one rotated it now.
        Ok(if done.rows_affected() == 1 {
            Ok(Some(user))
        } else if grace > 0 {
            Ok(None)
        } else {
            Err(user)
        })
    }

    pub async fn revoke_user_sessions(&self, user_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sessions SET revoked = 1 WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn revoke_refresh(&self, refresh_hash: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sessions SET revoked = 1 WHERE refresh_hash = $1")
            .bind(refresh_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn revoke_access(&self, access_hash: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sessions SET revoked = 1 WHERE access_hash = $1")
            .bind(access_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn insert_api_key(
        &self,
        id: &str,
        user_id: &str,
        name: &str,
        key_hash: &str,
        prefix: &str,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO api_keys (id, user_id, name, key_hash, prefix, created_at, revoked) VALUES ($1, $2, $3, $4, $5, $6, 0)")
            .bind(id)
            .bind(user_id)
            .bind(name)
            .bind(key_hash)
            .bind(prefix)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The caller's live keys: `(id, name, prefix, created_at)`, newest first.
    pub async fn api_keys(
        &self,
        user_id: &str,
    ) -> Result<Vec<(String, String, String, i64)>, sqlx::Error> {
        let rows = sqlx::query("SELECT id, name, prefix, created_at FROM api_keys WHERE user_id = $1 AND revoked = 0 ORDER BY created_at DESC, id")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("name")?,
                    r.try_get("prefix")?,
                    r.try_get("created_at")?,
                ))
            })
            .collect()
    }

    /// Revokes one of the caller's keys; `false` when they have no such live key.
    pub async fn revoke_api_key(&self, user_id: &str, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE api_keys SET revoked = 1 WHERE id = $1 AND user_id = $2 AND revoked = 0",
        )
        .bind(id)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn user_by_api_key(&self, key_hash: &str) -> Result<Option<User>, sqlx::Error> {
        let cols = USER_COLUMNS
            .split(", ")
            .map(|c| format!("u.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Built only from the constant column list.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {cols} FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1 AND k.revoked = 0")))
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| User::from_row(&r)).transpose()
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, sqlx::Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| User::from_row(&r)).transpose()
    }
}

const USER_COLUMNS: &str = "id, email, name, handle, is_admin, credits_remaining, subscription_tier, created_at, suspended_at";

/// An account as the API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub handle: String,
    pub is_admin: bool,
    pub credits_remaining: i64,
    pub subscription_tier: String,
    pub created_at: i64,
    /// Suspended by an administrator: signing in and every token are refused.
    #[serde(skip)]
    pub suspended: bool,
}

impl User {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<User, sqlx::Error> {
        Ok(User {
            id: r.try_get("id")?,
            email: r.try_get("email")?,
            name: r.try_get("name")?,
            handle: r.try_get("handle")?,
            is_admin: r.try_get::<i64, _>("is_admin")? != 0,
            credits_remaining: r.try_get("credits_remaining")?,
            subscription_tier: r.try_get("subscription_tier")?,
            created_at: r.try_get("created_at")?,
            suspended: r.try_get::<Option<i64>, _>("suspended_at")?.is_some(),
        })
    }
}

/// `$from, $from+1, …` for `n` values bound in order (an `IN (…)` list).
pub fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
