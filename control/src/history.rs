//! The call history: one [`CallRecord`] per ringing, kept in an embedded SQLite database (a file
//! under the data directory) so that it survives restarts.
//!
//! The [`Ringer`](crate::ring::Ringer) emits full records in its [`Step`](crate::ring::Step)s;
//! [`HistoryStore::upsert`] stores them keyed by `session_id` (the latest write wins). Listing a
//! user's history ([`HistoryStore::list_for_user`]) returns the calls where they were the caller,
//! a callee or a participant, newest first, a page at a time with an opaque cursor.
//!
//! Every method blocks on SQLite; from async code use the `*_blocking` helpers on an
//! `Arc<HistoryStore>` (they run on tokio's blocking pool) or call `spawn_blocking` yourself.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use greenroom_proto::{CallCid, CallKind, CallRecord, RingOutcome};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Row};

/// The schema version this code writes (SQLite `user_version`).
pub const SCHEMA_VERSION: u32 = 1;
/// Largest page [`HistoryStore::list_for_user`] returns.
pub const MAX_PAGE: usize = 200;

/// The schema migrations; migration `i` moves `user_version` from `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r"
CREATE TABLE calls (
    id              INTEGER PRIMARY KEY,
    session_id      TEXT NOT NULL UNIQUE,
    call_cid        TEXT NOT NULL,
    caller_user_id  TEXT NOT NULL,
    callee_user_ids TEXT NOT NULL,
    group_id        TEXT,
    kind            TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    started_at_ms   INTEGER NOT NULL,
    answered_at_ms  INTEGER,
    ended_at_ms     INTEGER,
    duration_ms     INTEGER,
    participants    TEXT NOT NULL
);
CREATE TABLE call_users (
    user_id       TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    call_id       INTEGER NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, started_at_ms, call_id)
) WITHOUT ROWID;
CREATE INDEX call_users_call ON call_users(call_id);
"];

/// Why a history operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// SQLite failed.
    #[error("history database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Creating the database's directory failed.
    #[error("history directory: {0}")]
    Io(#[from] std::io::Error),
    /// The database was written by a newer version of Greenroom.
    #[error("history schema version {found} is newer than this server's {SCHEMA_VERSION}")]
    SchemaTooNew {
        /// The version found in the file.
        found: u32,
    },
    /// A stored value could not be read back.
    #[error("corrupt history row: {0}")]
    Corrupt(String),
    /// A page cursor that this store did not produce.
    #[error("invalid history cursor `{0}`")]
    BadCursor(String),
    /// A value too large for SQLite's 64-bit signed integers.
    #[error("value out of range: {0}")]
    OutOfRange(u64),
    /// The blocking task running the query panicked or was cancelled.
    #[error("history task failed: {0}")]
    Task(String),
}

/// Where a page of history ends; pass it back to get the next (older) page. Its text form
/// (`<started_at_ms>.<row id>`) is what HTTP clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HistoryCursor {
    started_at_ms: i64,
    id: i64,
}

impl fmt::Display for HistoryCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.started_at_ms, self.id)
    }
}

impl FromStr for HistoryCursor {
    type Err = HistoryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || HistoryError::BadCursor(s.chars().take(80).collect());
        let (a, b) = s.split_once('.').ok_or_else(bad)?;
        let started_at_ms: i64 = a.parse().map_err(|_| bad())?;
        let id: i64 = b.parse().map_err(|_| bad())?;
        if started_at_ms < 0 || id < 0 {
            return Err(bad());
        }
        Ok(HistoryCursor { started_at_ms, id })
    }
}

/// One page of a user's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The records, newest first.
    pub records: Vec<CallRecord>,
    /// Where to continue for older records; `None` when this is the last page.
    pub next: Option<HistoryCursor>,
}

/// The call history database.
#[derive(Debug)]
pub struct HistoryStore {
    conn: Mutex<Connection>,
}

impl HistoryStore {
    /// Opens (creating if needed) the database file and its directory, and migrates the schema.
    pub fn open(path: &Path) -> Result<HistoryStore, HistoryError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        HistoryStore::init(conn)
    }

    /// A database in memory (lost on drop); for tests and for running without a data directory.
    pub fn open_in_memory() -> Result<HistoryStore, HistoryError> {
        HistoryStore::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<HistoryStore, HistoryError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let found: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(HistoryError::SchemaTooNew { found });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(HistoryStore {
            conn: Mutex::new(conn),
        })
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, HistoryError> {
        Ok(self
            .conn
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Stores a record, replacing the one with the same `session_id` (a call's record is written
    /// when its ringing resolves and again on every change until it ends).
    pub fn upsert(&self, rec: &CallRecord) -> Result<(), HistoryError> {
        let started = to_i64(rec.started_at_ms)?;
        let answered = rec.answered_at_ms.map(to_i64).transpose()?;
        let ended = rec.ended_at_ms.map(to_i64).transpose()?;
        let duration = rec.duration_ms.map(to_i64).transpose()?;
        let callees = json_list(&rec.callee_user_ids)?;
        let participants = json_list(&rec.participants)?;
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let id: i64 = tx.query_row(
            "INSERT INTO calls (session_id, call_cid, caller_user_id, callee_user_ids, group_id,
                                kind, outcome, started_at_ms, answered_at_ms, ended_at_ms,
                                duration_ms, participants)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT(session_id) DO UPDATE SET
                call_cid = excluded.call_cid,
                caller_user_id = excluded.caller_user_id,
                callee_user_ids = excluded.callee_user_ids,
                group_id = excluded.group_id,
                kind = excluded.kind,
                outcome = excluded.outcome,
                started_at_ms = excluded.started_at_ms,
                answered_at_ms = excluded.answered_at_ms,
                ended_at_ms = excluded.ended_at_ms,
                duration_ms = excluded.duration_ms,
                participants = excluded.participants
             RETURNING id",
            params![
                rec.session_id,
                rec.call_cid.to_string(),
                rec.caller_user_id,
                callees,
                rec.group_id,
                rec.kind.as_str(),
                rec.outcome.as_str(),
                started,
                answered,
                ended,
                duration,
                participants,
            ],
            |r| r.get(0),
        )?;
        tx.execute("DELETE FROM call_users WHERE call_id = ?1", params![id])?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT OR IGNORE INTO call_users (user_id, started_at_ms, call_id)
                 VALUES (?1, ?2, ?3)",
            )?;
            for u in std::iter::once(&rec.caller_user_id)
                .chain(&rec.callee_user_ids)
                .chain(&rec.participants)
            {
                ins.execute(params![u, started, id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores every record of a batch in order (later records for a session win).
    pub fn upsert_all(&self, recs: &[CallRecord]) -> Result<(), HistoryError> {
        recs.iter().try_for_each(|r| self.upsert(r))
    }

    /// The record of one ringing.
    pub fn get(&self, session_id: &str) -> Result<Option<CallRecord>, HistoryError> {
        let conn = self.conn.lock();
        let row = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM calls c WHERE c.session_id = ?1"),
                params![session_id],
                read_row,
            )
            .optional()?;
        row.map(|(_, r)| r).transpose()
    }

    /// The user's calls (as caller, callee or participant), newest first: at most `limit`
    /// (clamped to 1..=[`MAX_PAGE`]) records older than `before` (the `next` of the previous
    /// page), or the newest ones without a cursor.
    pub fn list_for_user(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<HistoryCursor>,
    ) -> Result<HistoryPage, HistoryError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let (b_started, b_id) = match before {
            Some(c) => (c.started_at_ms, c.id),
            None => (i64::MAX, i64::MAX),
        };
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM call_users u JOIN calls c ON c.id = u.call_id
             WHERE u.user_id = ?1 AND (u.started_at_ms, u.call_id) < (?2, ?3)
             ORDER BY u.started_at_ms DESC, u.call_id DESC
             LIMIT ?4"
        ))?;
        // One extra row tells whether an older page exists.
        let rows = stmt.query_map(
            params![user_id, b_started, b_id, (limit + 1) as i64],
            read_row,
        )?;
        let mut records = Vec::with_capacity(limit);
        let mut last = None;
        let mut more = false;
        for row in rows {
            let (cursor, rec) = row?;
            if records.len() == limit {
                more = true;
                break;
            }
            records.push(rec?);
            last = Some(cursor);
        }
        Ok(HistoryPage {
            records,
            next: if more { last } else { None },
        })
    }

    /// [`HistoryStore::upsert_all`] on tokio's blocking pool.
    pub async fn upsert_all_blocking(
        self: &Arc<Self>,
        recs: Vec<CallRecord>,
    ) -> Result<(), HistoryError> {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || store.upsert_all(&recs))
            .await
            .map_err(|e| HistoryError::Task(e.to_string()))?
    }

    /// [`HistoryStore::list_for_user`] on tokio's blocking pool.
    pub async fn list_for_user_blocking(
        self: &Arc<Self>,
        user_id: String,
        limit: usize,
        before: Option<HistoryCursor>,
    ) -> Result<HistoryPage, HistoryError> {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || store.list_for_user(&user_id, limit, before))
            .await
            .map_err(|e| HistoryError::Task(e.to_string()))?
    }
}

const COLUMNS: &str = "c.id, c.session_id, c.call_cid, c.caller_user_id, c.callee_user_ids, \
     c.group_id, c.kind, c.outcome, c.started_at_ms, c.answered_at_ms, c.ended_at_ms, \
     c.duration_ms, c.participants";

type RowResult = (HistoryCursor, Result<CallRecord, HistoryError>);

/// Reads one row; SQL errors fail the row, bad stored values are reported as `Corrupt`.
fn read_row(r: &Row<'_>) -> rusqlite::Result<RowResult> {
    let id: i64 = r.get(0)?;
    let started: i64 = r.get(8)?;
    let cursor = HistoryCursor {
        started_at_ms: started,
        id,
    };
    let cid: String = r.get(2)?;
    let kind: String = r.get(6)?;
    let outcome: String = r.get(7)?;
    let callees: String = r.get(4)?;
    let participants: String = r.get(12)?;
    let session_id: String = r.get(1)?;
    let caller: String = r.get(3)?;
    let group_id: Option<String> = r.get(5)?;
    let answered: Option<i64> = r.get(9)?;
    let ended: Option<i64> = r.get(10)?;
    let duration: Option<i64> = r.get(11)?;
    let rec = (|| {
        Ok(CallRecord {
            call_cid: CallCid::from_str(&cid).map_err(|e| HistoryError::Corrupt(e.to_string()))?,
            kind: CallKind::parse(&kind)
                .ok_or_else(|| HistoryError::Corrupt(format!("kind `{kind}`")))?,
            outcome: RingOutcome::parse(&outcome)
                .ok_or_else(|| HistoryError::Corrupt(format!("outcome `{outcome}`")))?,
            callee_user_ids: parse_list(&callees)?,
            participants: parse_list(&participants)?,
            session_id,
            caller_user_id: caller,
            group_id,
            started_at_ms: to_u64(started)?,
            answered_at_ms: answered.map(to_u64).transpose()?,
            ended_at_ms: ended.map(to_u64).transpose()?,
            duration_ms: duration.map(to_u64).transpose()?,
        })
    })();
    Ok((cursor, rec))
}

fn to_i64(v: u64) -> Result<i64, HistoryError> {
    i64::try_from(v).map_err(|_| HistoryError::OutOfRange(v))
}

fn to_u64(v: i64) -> Result<u64, HistoryError> {
    u64::try_from(v).map_err(|_| HistoryError::Corrupt(format!("negative value {v}")))
}

fn json_list(v: &[String]) -> Result<String, HistoryError> {
    serde_json::to_string(v).map_err(|e| HistoryError::Corrupt(e.to_string()))
}

fn parse_list(s: &str) -> Result<Vec<String>, HistoryError> {
    serde_json::from_str(s).map_err(|e| HistoryError::Corrupt(format!("user list: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A unique database path under the temp dir, removed (with its WAL files) on drop.
    struct TempDb(PathBuf);

    impl TempDb {
        fn new(tag: &str) -> TempDb {
            let dir = std::env::temp_dir().join(format!(
                "greenroom-history-{tag}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            TempDb(dir.join("data").join("history.sqlite3"))
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent().and_then(Path::parent) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn rec(session: &str, caller: &str, callees: &[&str], started: u64) -> CallRecord {
        CallRecord {
            session_id: session.into(),
            call_cid: format!("default:{session}").parse().unwrap(),
            caller_user_id: caller.into(),
            callee_user_ids: callees.iter().map(|s| (*s).to_owned()).collect(),
            group_id: None,
            kind: CallKind::Audio,
            outcome: RingOutcome::Missed,
            started_at_ms: started,
            answered_at_ms: None,
            ended_at_ms: Some(started.saturating_add(15_000)),
            duration_ms: None,
            participants: vec![caller.into()],
        }
    }

    #[test]
    fn records_survive_reopening_the_file() {
        let db = TempDb::new("reopen");
        let mut r = rec("s1", "alice", &["bob"], 1_000);
        {
            let store = HistoryStore::open(&db.0).unwrap();
            assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
            r.outcome = RingOutcome::Accepted;
            r.answered_at_ms = Some(2_000);
            r.ended_at_ms = None;
            r.participants = vec!["alice".into(), "bob".into()];
            store.upsert(&r).unwrap();
        }
        {
            let store = HistoryStore::open(&db.0).unwrap();
            assert_eq!(store.get("s1").unwrap().as_ref(), Some(&r));
            // The call ends after the restart: the update lands on the same record.
            r.ended_at_ms = Some(62_000);
            r.duration_ms = Some(60_000);
            r.kind = CallKind::Video;
            r.group_id = Some("team".into());
            store.upsert(&r).unwrap();
        }
        let store = HistoryStore::open(&db.0).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let page = store.list_for_user("bob", 10, None).unwrap();
        assert_eq!(page.records, vec![r.clone()]);
        assert_eq!(page.next, None);
        assert_eq!(store.get("nope").unwrap(), None);
    }

    #[test]
    fn newest_first_and_paged_without_gaps_or_repeats() {
        let store = HistoryStore::open_in_memory().unwrap();
        // 25 calls involving alice, some with equal start times, inserted out of order,
        // and noise from other users.
        let mut expected = Vec::new();
        for i in 0..25u64 {
            let started = 10_000 + (i * 7919) % 25 / 2 * 1_000;
            let r = if i % 2 == 0 {
                rec(&format!("a{i}"), "alice", &["bob"], started)
            } else {
                rec(&format!("a{i}"), "carol", &["alice", "dave"], started)
            };
            store.upsert(&r).unwrap();
            expected.push(r);
            store
                .upsert(&rec(&format!("n{i}"), "erin", &["frank"], started))
                .unwrap();
        }
        let mut seen: Vec<CallRecord> = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = store.list_for_user("alice", 7, cursor).unwrap();
            pages += 1;
            assert!(page.records.len() <= 7);
            seen.extend(page.records);
            match page.next {
                Some(c) => {
                    // The text form round-trips, as HTTP clients will send it back.
                    cursor = Some(c.to_string().parse().unwrap());
                }
                None => break,
            }
        }
        assert_eq!(pages, 4);
        assert_eq!(seen.len(), 25);
        for w in seen.windows(2) {
            assert!(w[0].started_at_ms >= w[1].started_at_ms, "newest first");
        }
        let mut ids: Vec<_> = seen.iter().map(|r| r.session_id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 25, "no record twice");
        assert!(seen.iter().all(|r| r.session_id.starts_with('a')));
        // Ties on started_at_ms: the later insert comes first.
        let p = store.list_for_user("frank", 200, None).unwrap();
        assert_eq!(p.records.len(), 25);
        assert_eq!(p.next, None);
    }

    #[test]
    fn exact_page_size_has_no_next() {
        let store = HistoryStore::open_in_memory().unwrap();
        for i in 0..3 {
            store
                .upsert(&rec(&format!("s{i}"), "a", &["b"], i))
                .unwrap();
        }
        let p = store.list_for_user("a", 3, None).unwrap();
        assert_eq!(p.records.len(), 3);
        assert_eq!(p.next, None);
        let p = store.list_for_user("a", 2, None).unwrap();
        assert_eq!(
            p.records
                .iter()
                .map(|r| r.started_at_ms)
                .collect::<Vec<_>>(),
            vec![2, 1]
        );
        let p = store.list_for_user("a", 2, p.next).unwrap();
        assert_eq!(p.records.len(), 1);
        assert_eq!(p.records[0].started_at_ms, 0);
        assert_eq!(p.next, None);
        // limit 0 is clamped to 1.
        assert_eq!(store.list_for_user("a", 0, None).unwrap().records.len(), 1);
        assert!(store
            .list_for_user("zz", 10, None)
            .unwrap()
            .records
            .is_empty());
    }

    #[test]
    fn update_reindexes_participants() {
        let store = HistoryStore::open_in_memory().unwrap();
        let mut r = rec("g", "alice", &["bob", "carol"], 5);
        r.group_id = Some("team".into());
        store.upsert(&r).unwrap();
        r.participants.push("carol".into());
        r.outcome = RingOutcome::Accepted;
        store.upsert(&r).unwrap();
        for u in ["alice", "bob", "carol"] {
            let p = store.list_for_user(u, 10, None).unwrap();
            assert_eq!(p.records, vec![r.clone()], "{u}");
        }
    }

    #[test]
    fn bad_cursors_and_values_are_errors() {
        for s in ["", "1", "a.b", "1.-2", "-1.2", "1.2.3"] {
            assert!(s.parse::<HistoryCursor>().is_err(), "{s}");
        }
        let store = HistoryStore::open_in_memory().unwrap();
        assert!(matches!(
            store.upsert(&rec("x", "a", &["b"], u64::MAX)),
            Err(HistoryError::OutOfRange(u64::MAX))
        ));
    }

    #[test]
    fn newer_schema_is_refused() {
        let db = TempDb::new("newer");
        {
            HistoryStore::open(&db.0).unwrap();
        }
        {
            let c = Connection::open(&db.0).unwrap();
            c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        assert!(matches!(
            HistoryStore::open(&db.0),
            Err(HistoryError::SchemaTooNew { found }) if found == SCHEMA_VERSION + 1
        ));
    }

    #[test]
    fn corrupt_rows_are_reported_not_panicked() {
        let store = HistoryStore::open_in_memory().unwrap();
        store.upsert(&rec("s", "a", &["b"], 1)).unwrap();
        store
            .conn
            .lock()
            .execute("UPDATE calls SET outcome = 'exploded'", [])
            .unwrap();
        assert!(matches!(
            store.list_for_user("a", 10, None),
            Err(HistoryError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn blocking_helpers_work_from_async_code() {
        let store = Arc::new(HistoryStore::open_in_memory().unwrap());
        store
            .upsert_all_blocking(vec![rec("s1", "a", &["b"], 1), rec("s2", "a", &["c"], 2)])
            .await
            .unwrap();
        let p = store
            .list_for_user_blocking("a".into(), 10, None)
            .await
            .unwrap();
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.records[0].session_id, "s2");
    }

    #[test]
    fn ringer_records_land_in_the_store() {
        use crate::ring::{InitiateRequest, Ringer};
        let store = HistoryStore::open_in_memory().unwrap();
        let mut r = Ringer::new();
        let c: CallCid = "default:x".parse().unwrap();
        let rq = InitiateRequest::to_users(c.clone(), "alice", &["bob".into()], CallKind::Audio)
            .with_session_id("sess");
        let (_, s) = r.initiate(rq, 1_000).unwrap();
        store.upsert_all(&s.records).unwrap();
        let s = r.accept(&c, "bob", "phone", 3_000).unwrap();
        store.upsert_all(&s.records).unwrap();
        let s = r.end(&c, "bob", 10_000).unwrap();
        store.upsert_all(&s.records).unwrap();
        let got = store.get("sess").unwrap().unwrap();
        assert_eq!(got.outcome, RingOutcome::Accepted);
        assert_eq!(got.duration_ms, Some(7_000));
        assert_eq!(got.participants, vec!["alice".to_owned(), "bob".to_owned()]);
    }
}
