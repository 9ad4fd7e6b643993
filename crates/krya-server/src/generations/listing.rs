//! Lists of a user's generations: filters and cursor pages, newest first by
//! `(created_at, id)`. (The feed lists jobs of any kind: `http/feed.rs`.)

use super::*;

/// Cursor pagination, newest first: the cursor is `created_at.id` of the last item.
fn parse_cursor(c: &str) -> Result<(i64, String), ApiError> {
    c.split_once('.')
        .and_then(|(t, id)| Some((t.parse().ok()?, id.to_string())))
        .filter(|(_, id)| id.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| invalid("cursor", "is not a cursor this API returned"))
}

pub(crate) struct Page {
    pub limit: i64,
    pub cursor: Option<(i64, String)>,
}

impl Page {
    pub fn new(limit: Option<u32>, cursor: Option<&str>) -> Result<Page, ApiError> {
        let limit = limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(invalid("limit", "must be from 1 to 100"));
        }
        Ok(Page {
            limit: limit as i64,
            cursor: cursor.map(parse_cursor).transpose()?,
        })
    }

    pub fn next(&self, items: &[Generation]) -> Option<String> {
        (items.len() as i64 == self.limit)
            .then(|| items.last().map(|g| format!("{}.{}", g.created_at, g.id)))
            .flatten()
    }
}

/// Which generations a listing shows; `None`/`false`: no condition.
#[derive(Default)]
pub(crate) struct Filter<'a> {
    pub user_id: Option<&'a str>,
    pub model: Option<&'a str>,
    pub status: Option<&'a str>,
    /// Words the prompt contains (case-insensitive for ASCII letters).
    pub search: Option<&'a str>,
}

/// The `LIKE` pattern for a search (`''` when there is none), its wildcards escaped.
pub(crate) fn search_pattern(q: Option<&str>) -> Result<String, ApiError> {
    let q = q.map(str::trim).unwrap_or("");
    if q.chars().count() > 200 {
        return Err(invalid("q", "must be at most 200 characters"));
    }
    if q.is_empty() {
        return Ok(String::new());
    }
    let mut p = String::from("%");
    for c in q.to_ascii_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    Ok(p)
}

/// One page of generations, newest first, after the page's cursor.
pub(crate) async fn page_of(
    db: &Db,
    f: &Filter<'_>,
    page: &Page,
) -> Result<Vec<Generation>, ApiError> {
    let (t, cid) = page.cursor.clone().unwrap_or((i64::MAX, String::new()));
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {GENERATION_COLUMNS} FROM {GENERATIONS} \
         WHERE ($1 = '' OR g.user_id = $1) AND ($2 = '' OR g.model = $2) AND ($3 = '' OR g.status = $3) \
         AND (g.created_at < $4 OR (g.created_at = $4 AND g.id < $5) OR $6 = 0) \
         AND ($8 = '' OR LOWER(g.prompt) LIKE $8 ESCAPE '\\') \
         ORDER BY g.created_at DESC, g.id DESC LIMIT $7"
    )))
    .bind(f.user_id.unwrap_or(""))
    .bind(f.model.unwrap_or(""))
    .bind(f.status.unwrap_or(""))
    .bind(t)
    .bind(&cid)
    .bind(page.cursor.is_some() as i64)
    .bind(page.limit)
    .bind(search_pattern(f.search)?)
    .fetch_all(&db.pool)
    .await
    .map_err(internal)?;
    rows.iter()
        .map(Generation::from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(internal)
}
