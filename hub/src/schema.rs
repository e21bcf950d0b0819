//! The hub's versioned schema, its migrations, and its roles.

use crate::{Hub, HubError};
use postgres::Client;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = 1;

/// Migrations: `MIGRATIONS[k]` takes the schema from version `k` to `k + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE hosts (
    host_id     text PRIMARY KEY CHECK (host_id <> ''),
    owner       name NOT NULL DEFAULT current_user,
    fingerprint jsonb NOT NULL,
    kernel      text NOT NULL,
    contract    text NOT NULL,
    quirks      text[] NOT NULL,
    backend     text NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE cases (
    id             bigserial UNIQUE,
    hash           text PRIMARY KEY,
    format_version integer NOT NULL,
    bytes          bytea NOT NULL,
    contributor    text NOT NULL REFERENCES hosts (host_id),
    points         text[] NOT NULL,
    added_at       timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE findings (
    signature   text PRIMARY KEY,
    class       text NOT NULL,
    title       text NOT NULL,
    contributor text NOT NULL REFERENCES hosts (host_id),
    case_hash   text NOT NULL,
    case_bytes  bytea NOT NULL,
    minimized   boolean NOT NULL,
    verdict     jsonb NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE occurrences (
    signature  text NOT NULL REFERENCES findings (signature),
    host_id    text NOT NULL REFERENCES hosts (host_id),
    campaign   text NOT NULL,
    kernel     text NOT NULL,
    count      bigint NOT NULL CHECK (count > 0),
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (signature, host_id, campaign)
);
CREATE TABLE heartbeats (
    host_id         text NOT NULL REFERENCES hosts (host_id),
    campaign        text NOT NULL,
    seq             bigint NOT NULL,
    at              timestamptz NOT NULL,
    execs           bigint NOT NULL,
    execs_per_sec   double precision NOT NULL,
    coverage_points integer NOT NULL,
    rules_covered   integer NOT NULL,
    corpus          integer NOT NULL,
    findings        bigint NOT NULL,
    PRIMARY KEY (host_id, campaign, seq)
);
CREATE FUNCTION xsave_owns(h text) RETURNS boolean LANGUAGE sql STABLE AS
    $$ SELECT EXISTS (SELECT 1 FROM hosts WHERE host_id = h AND owner = current_user) $$;
ALTER TABLE hosts ENABLE ROW LEVEL SECURITY;
ALTER TABLE cases ENABLE ROW LEVEL SECURITY;
ALTER TABLE findings ENABLE ROW LEVEL SECURITY;
ALTER TABLE occurrences ENABLE ROW LEVEL SECURITY;
ALTER TABLE heartbeats ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON hosts FOR SELECT USING (true);
CREATE POLICY read_all ON cases FOR SELECT USING (true);
CREATE POLICY read_all ON findings FOR SELECT USING (true);
CREATE POLICY read_all ON occurrences FOR SELECT USING (true);
CREATE POLICY read_all ON heartbeats FOR SELECT USING (true);
CREATE POLICY own_insert ON hosts FOR INSERT WITH CHECK (owner = current_user);
CREATE POLICY own_update ON hosts FOR UPDATE USING (owner = current_user) WITH CHECK (owner = current_user);
CREATE POLICY own_insert ON cases FOR INSERT WITH CHECK (xsave_owns(contributor));
CREATE POLICY own_insert ON findings FOR INSERT WITH CHECK (xsave_owns(contributor));
CREATE POLICY own_update ON findings FOR UPDATE USING (xsave_owns(contributor)) WITH CHECK (xsave_owns(contributor));
CREATE POLICY own_insert ON occurrences FOR INSERT WITH CHECK (xsave_owns(host_id));
CREATE POLICY own_update ON occurrences FOR UPDATE USING (xsave_owns(host_id)) WITH CHECK (xsave_owns(host_id));
CREATE POLICY own_insert ON heartbeats FOR INSERT WITH CHECK (xsave_owns(host_id));
"#];

/// The schema version a database holds (`None`: no xsave-rig schema).
pub fn version(c: &mut Client) -> Result<Option<i32>, postgres::Error> {
    let exists: bool = c.query_one("SELECT to_regclass('hub_meta') IS NOT NULL", &[])?.get(0);
    if !exists {
        return Ok(None);
    }
    let row = c.query_opt("SELECT value::integer FROM hub_meta WHERE key = 'schema_version'", &[])?;
    Ok(row.map(|r| r.get(0)))
}

/// What `init` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitReport {
    /// Version before (0: none).
    pub from: i32,
    /// Version now.
    pub to: i32,
    /// Roles created or refreshed (writer, reader).
    pub roles: Option<(String, String)>,
}

/// Create or migrate the schema to [`SCHEMA_VERSION`]; with `roles`, create (or refresh the
/// grants of) the writer and reader group roles. Safe to run concurrently and repeatedly.
pub fn init(hub: &mut Hub, roles: Option<(&str, &str)>) -> Result<InitReport, HubError> {
    if let Some((w, r)) = roles {
        check_role_name(w)?;
        check_role_name(r)?;
    }
    let url = hub.url.clone();
    let err = |e: postgres::Error| HubError::Db { url: url.clone(), msg: crate::pg_msg(&e) };
    let mut tx = hub.client.transaction().map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock(7718001)", &[]).map_err(err)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS hub_meta (key text PRIMARY KEY, value text NOT NULL)").map_err(err)?;
    let from: i32 =
        tx.query_opt("SELECT value::integer FROM hub_meta WHERE key = 'schema_version'", &[]).map_err(err)?.map_or(0, |r| r.get(0));
    if from > SCHEMA_VERSION {
        return Err(HubError::Invalid(format!(
            "hub {url}: schema version {from} is newer than this build's {SCHEMA_VERSION}; use a newer xsave-rig"
        )));
    }
    for m in &MIGRATIONS[from as usize..SCHEMA_VERSION as usize] {
        tx.batch_execute(m).map_err(err)?;
    }
    tx.execute(
        "INSERT INTO hub_meta (key, value) VALUES ('schema_version', $1) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&SCHEMA_VERSION.to_string()],
    )
    .map_err(err)?;
    if let Some((w, r)) = roles {
        for role in [w, r] {
            let exists: bool = tx.query_one("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", &[&role]).map_err(err)?.get(0);
            if !exists {
                run_formatted(&mut tx, "CREATE ROLE %I NOLOGIN", &[role]).map_err(err)?;
            }
        }
        let tables = "hub_meta, hosts, cases, findings, occurrences, heartbeats";
        run_formatted(&mut tx, "GRANT USAGE ON SCHEMA public TO %I, %I", &[w, r]).map_err(err)?;
        run_formatted(&mut tx, &format!("REVOKE ALL ON {tables} FROM %I, %I"), &[w, r]).map_err(err)?;
        run_formatted(&mut tx, &format!("GRANT SELECT ON {tables} TO %I, %I"), &[w, r]).map_err(err)?;
        run_formatted(&mut tx, "GRANT INSERT ON hosts, cases, findings, occurrences, heartbeats TO %I", &[w]).map_err(err)?;
        run_formatted(&mut tx, "GRANT UPDATE (fingerprint, kernel, contract, quirks, backend, last_seen) ON hosts TO %I", &[w])
            .map_err(err)?;
        run_formatted(&mut tx, "GRANT UPDATE (class, title, case_hash, case_bytes, minimized, verdict) ON findings TO %I", &[w])
            .map_err(err)?;
        run_formatted(&mut tx, "GRANT UPDATE (kernel, count, last_seen) ON occurrences TO %I", &[w]).map_err(err)?;
        run_formatted(&mut tx, "GRANT USAGE ON SEQUENCE cases_id_seq TO %I", &[w]).map_err(err)?;
        run_formatted(&mut tx, "GRANT EXECUTE ON FUNCTION xsave_owns(text) TO %I, %I", &[w, r]).map_err(err)?;
    }
    tx.commit().map_err(err)?;
    Ok(InitReport { from, to: SCHEMA_VERSION, roles: roles.map(|(w, r)| (w.to_string(), r.to_string())) })
}

/// A login role for one fuzzing host (`writer`) or one triager (`reader`): created if
/// missing (with `password`, when given) and made a member of the group role.
pub fn add_login(hub: &mut Hub, login: &str, group: &str, password: Option<&str>) -> Result<bool, HubError> {
    check_role_name(login)?;
    check_role_name(group)?;
    let url = hub.url.clone();
    let err = |e: postgres::Error| HubError::Db { url: url.clone(), msg: crate::pg_msg(&e) };
    let mut tx = hub.client.transaction().map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock(7718002)", &[]).map_err(err)?;
    let exists: bool = tx.query_one("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", &[&login]).map_err(err)?.get(0);
    if !exists {
        run_formatted(&mut tx, "CREATE ROLE %I LOGIN", &[login]).map_err(err)?;
    }
    if let Some(pw) = password {
        let sql: String =
            tx.query_one("SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", &[&login, &pw]).map_err(err)?.get(0);
        tx.batch_execute(&sql).map_err(err)?;
    }
    run_formatted(&mut tx, "GRANT %I TO %I", &[group, login]).map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(!exists)
}

/// Role names: lowercase identifiers (the server quotes them anyway; this keeps them plain).
fn check_role_name(n: &str) -> Result<(), HubError> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && !n.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(HubError::Invalid(format!("bad role name {n:?} (lowercase letters, digits and _, not starting with a digit or pg_)")))
    }
}

/// Run a utility statement whose identifiers the server quotes: `template` uses `%I` for each
/// of `idents`, expanded by `format()` from parameters, so no name is spliced in by hand.
fn run_formatted(tx: &mut postgres::Transaction, template: &str, idents: &[&str]) -> Result<(), postgres::Error> {
    let params: Vec<String> = (1..=idents.len()).map(|i| format!("${i}::text")).collect();
    let q = format!("SELECT format($0::text, {})", params.join(", "));
    // `$0` is not a parameter: put the template first and shift the idents.
    let q = q.replace("$0::text", &format!("${}::text", idents.len() + 1));
    let mut args: Vec<&(dyn postgres::types::ToSql + Sync)> = idents.iter().map(|s| s as &(dyn postgres::types::ToSql + Sync)).collect();
    let t = template.to_string();
    args.push(&t);
    let sql: String = tx.query_one(&q, &args)?.get(0);
    tx.batch_execute(&sql)
}
