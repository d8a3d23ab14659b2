//! The feature server over HTTP, in-process on an ephemeral loopback port: the lab's
//! `GET /features/{id}`, Feast's `POST /get-online-features` (golden JSON),
//! `POST /historical` streamed exactly like the CLI, the admin routes behind the token,
//! JSON errors, a database outage and its recovery, a client leaving mid-stream, graceful
//! shutdown, OpenAPI and metrics.
//!
//! Golden files live in `tests/golden/serving/` (`<case>.request.json` is sent as is,
//! `<case>.response.json` is the expected body); `UPDATE_GOLDEN=1` rewrites the
//! responses after a deliberate change (review the diff).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::proxy::TcpProxy;
use common::server::{TestServer, config_for};
use common::{TempRepo, TestDb, ingested_and_applied, skewless};
use serde_json::{Value, json};
use skewless::config::Config;
use sqlx::{PgPool, Row};

const FEB: &str = "2024-02-29";

/// `churn_serving_v1`, in service order: (view, feature). The last five are derived
/// (on-demand views running the example plugins).
const SERVING_V1: [(&str, &str); 19] = [
    ("subs_profile_fv", "months_active"),
    ("subs_profile_fv", "monthly_fee"),
    ("subs_profile_fv", "paperless_billing"),
    ("subs_profile_fv", "plan_stream_tv"),
    ("subs_profile_fv", "plan_stream_movies"),
    ("subs_profile_fv", "net_service"),
    ("usage_agg_30d_fv", "watch_hours_30d"),
    ("usage_agg_30d_fv", "avg_session_mins_7d"),
    ("usage_agg_30d_fv", "unique_devices_30d"),
    ("usage_agg_30d_fv", "skips_7d"),
    ("usage_agg_30d_fv", "rebuffer_events_7d"),
    ("payments_agg_90d_fv", "failed_payments_90d"),
    ("support_agg_90d_fv", "support_tickets_90d"),
    ("support_agg_90d_fv", "ticket_avg_resolution_hrs_90d"),
    ("churn_signals_fv", "fee_per_watch_hour"),
    ("churn_signals_fv", "is_long_tenure"),
    ("churn_signals_fv", "engagement_score"),
    ("churn_signals_fv", "has_payment_issue"),
    ("tenure_bucket_fv", "tenure_bucket"),
];

/// `churn_training_v1`, in service order.
const TRAINING_V1: [&str; 6] = [
    "subs_profile_fv__months_active",
    "subs_profile_fv__monthly_fee",
    "subs_profile_fv__paperless_billing",
    "usage_agg_30d_fv__watch_hours_30d",
    "usage_agg_30d_fv__avg_session_mins_7d",
    "payments_agg_90d_fv__failed_payments_90d",
];

const EPOCH: &str = "1970-01-01T00:00:00Z";

/// A test database with generated data ingested and applied (and materialized over
/// 2024-01-01..2024-03-01, so the online tables hold the February snapshot).
struct Fixture {
    db: TestDb,
    repo: TempRepo,
    pool: PgPool,
}

impl Fixture {
    async fn materialized(users: u64) -> Self {
        Self::new(users, |_| {}, true).await
    }

    async fn new(users: u64, edit: impl FnOnce(&TempRepo), materialize: bool) -> Self {
        let (db, repo) = ingested_and_applied(users, edit).await;
        if materialize {
            skewless(repo.path(), &db)
                .args(["materialize", "2024-01-01", "2024-03-01"])
                .assert()
                .success();
        }
        let pool = db.pool().await;
        Self { db, repo, pool }
    }

    fn config(&self) -> Config {
        config_for(self.repo.path(), &self.db.url)
    }

    async fn server(&self) -> TestServer {
        TestServer::start(self.config()).await
    }

    async fn user(&self, condition: &str) -> String {
        sqlx::query_scalar(&format!(
            "SELECT s.user_id FROM subscriptions_profile_snapshots s
             JOIN support_agg_90d_snapshots t USING (user_id, as_of)
             WHERE s.as_of = '{FEB}' AND {condition} ORDER BY s.user_id LIMIT 1"
        ))
        .fetch_one(&self.pool)
        .await
        .unwrap_or_else(|e| panic!("no generated user with {condition}: {e}"))
    }

    async fn active_training_queries(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
             AND query LIKE 'COPY (WITH%' AND state = 'active'",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }
}

fn render_f32(v: f32) -> String {
    let mut s = String::new();
    skewless::batch::write_f32(v, &mut s);
    s
}

/// The February snapshot of `user`, feature by feature (service order), as the JSON text
/// the server must print (None for NULL). Float32 columns are the snapshot cast to real.
async fn snapshot_json(pool: &PgPool, user: &str) -> Vec<(&'static str, Option<String>)> {
    let row = sqlx::query(
        "SELECT s.months_active::int8, s.monthly_fee::float4, s.paperless_billing, s.plan_stream_tv,
                s.plan_stream_movies, s.net_service::text, u.watch_hours_30d::float4,
                u.avg_session_mins_7d::float4, u.unique_devices_30d::int8, u.skips_7d::int8,
                u.rebuffer_events_7d::int8, p.failed_payments_90d::int8,
                t.support_tickets_90d::int8, t.ticket_avg_resolution_hrs_90d::float4
         FROM subscriptions_profile_snapshots s
         JOIN usage_agg_30d_snapshots u USING (user_id, as_of)
         JOIN payments_agg_90d_snapshots p USING (user_id, as_of)
         JOIN support_agg_90d_snapshots t USING (user_id, as_of)
         WHERE s.as_of = '2024-02-29' AND s.user_id = $1",
    )
    .bind(user)
    .fetch_one(pool)
    .await
    .unwrap();
    let int = |i: usize| row.get::<Option<i64>, _>(i).map(|v| v.to_string());
    let float = |i: usize| row.get::<Option<f32>, _>(i).map(render_f32);
    let boolean = |i: usize| row.get::<Option<bool>, _>(i).map(|v| v.to_string());
    let values = vec![
        int(0),
        float(1),
        boolean(2),
        boolean(3),
        boolean(4),
        row.get::<Option<String>, _>(5)
            .map(|s| serde_json::to_string(&s).unwrap()),
        float(6),
        float(7),
        int(8),
        int(9),
        int(10),
        int(11),
        int(12),
        float(13),
    ];
    SERVING_V1.iter().map(|(_, f)| *f).zip(values).collect()
}

/// A JSON object with its keys in document order (serde_json's map sorts them).
#[derive(Debug)]
struct Ordered(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Ordered, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(Visitor)
    }
}

impl Ordered {
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }

    fn get(&self, key: &str) -> &Value {
        &self
            .0
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no key {key} in {:?}", self.keys()))
            .1
    }
}

/// A JSON document that keeps its keys in document order, to write golden files in the
/// order the server (and Feast) writes them.
enum Doc {
    Scalar(Value),
    Array(Vec<Doc>),
    Object(Vec<(String, Doc)>),
}

impl<'de> serde::Deserialize<'de> for Doc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Doc;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Doc, E> {
                Ok(Doc::Scalar(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Doc, E> {
                Ok(Doc::Scalar(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Doc, E> {
                Ok(Doc::Scalar(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Doc, E> {
                Ok(Doc::Scalar(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Doc, E> {
                Ok(Doc::Scalar(v.into()))
            }
            fn visit_unit<E>(self) -> Result<Doc, E> {
                Ok(Doc::Scalar(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Doc::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Doc::Object(entries))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl serde::Serialize for Doc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Doc::Scalar(v) => v.serialize(s),
            Doc::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Doc::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// `text` pretty-printed, keys in their original order.
fn pretty_in_order(text: &str) -> String {
    let doc: Doc = serde_json::from_str(text).unwrap();
    serde_json::to_string_pretty(&doc).unwrap()
}

/// The lab's response shape, exactly.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LabFeatures {
    user_id: String,
    features: Ordered,
    statuses: Ordered,
}

/// `GET path`, expecting 200 in the lab's shape: (raw body, parsed).
async fn lab(server: &TestServer, path: &str) -> (String, LabFeatures) {
    let response = server.get(path).send().await.unwrap();
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "GET {path}"
    );
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "GET {path}: {text}");
    let parsed = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {path}: not the lab's shape ({e}): {text}"));
    (text, parsed)
}

/// An error response: the status, JSON `{"message", "code"}` and nothing else.
#[track_caller]
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) -> String {
    assert_eq!(status, want_status, "{body}");
    let object = body.as_object().unwrap_or_else(|| panic!("{body}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message"], "{body}");
    assert_eq!(body["code"], want_code, "{body}");
    let message = body["message"].as_str().unwrap().to_string();
    assert!(!message.is_empty(), "{body}");
    message
}

/// A raw response that must be a JSON error: (status, parsed body).
async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "status {status}: {text}"
    );
    (status, serde_json::from_str(&text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_by_id_in_the_lab_shape() {
    let fx = Fixture::materialized(200).await;
    let server = fx.server().await;
    let complete = fx
        .user("s.net_service <> 'No' AND t.ticket_avg_resolution_hrs_90d IS NOT NULL")
        .await;
    let no_internet = fx
        .user("s.net_service = 'No' AND s.plan_stream_tv IS NULL")
        .await;

    // The default feature service: churn_serving_v1, 19 features in service order, the
    // 14 stored ones equal to the February snapshot.
    let mut f64_would_differ = 0;
    for user in [&complete, &no_internet] {
        let (raw, body) = lab(&server, &format!("/features/{user}")).await;
        assert_eq!(&body.user_id, user);
        let names: Vec<&str> = SERVING_V1.iter().map(|(_, f)| *f).collect();
        assert_eq!(body.features.keys(), names);
        assert_eq!(body.statuses.keys(), names);
        for (name, expected) in snapshot_json(&fx.pool, user).await {
            let value = body.features.get(name);
            let status = body.statuses.get(name);
            match expected {
                Some(text) => {
                    assert_eq!(status, "PRESENT", "{user} {name}");
                    assert_eq!(value, &serde_json::from_str::<Value>(&text).unwrap());
                    // Float32 prints as an f32 (29.85, not 29.850000381469727).
                    assert!(
                        raw.contains(&format!("\"{name}\":{text},"))
                            || raw.contains(&format!("\"{name}\":{text}}}")),
                        "{user} {name}: expected {text} in {raw}"
                    );
                    if let Ok(v) = text.parse::<f32>()
                        && text.contains('.')
                        && (v as f64).to_string() != text
                    {
                        f64_would_differ += 1;
                    }
                }
                None => {
                    assert_eq!(value, &Value::Null, "{user} {name}");
                    assert_eq!(status, "NULL_VALUE", "{user} {name}");
                }
            }
        }
        if user == &complete {
            assert!(body.statuses.0.iter().all(|(_, s)| s == "PRESENT"), "{raw}");
        }
    }
    assert!(
        f64_would_differ > 0,
        "the data must hold floats whose f64 rendering differs"
    );

    // A NULL plan_stream_tv (no internet service) is null with NULL_VALUE, the rest of
    // the row is there.
    let (_, body) = lab(&server, &format!("/features/{no_internet}")).await;
    for name in ["plan_stream_tv", "plan_stream_movies"] {
        assert_eq!(body.features.get(name), &Value::Null);
        assert_eq!(body.statuses.get(name), "NULL_VALUE");
    }
    assert_eq!(body.features.get("net_service"), "No");
    assert_eq!(body.statuses.get("net_service"), "PRESENT");

    // ?features= in the order asked; ?feature_service=; full_feature_names.
    let (_, body) = lab(
        &server,
        &format!(
            "/features/{complete}?features=usage_agg_30d_fv:skips_7d,subs_profile_fv:monthly_fee"
        ),
    )
    .await;
    assert_eq!(body.features.keys(), ["skips_7d", "monthly_fee"]);
    let (_, service) = lab(
        &server,
        &format!("/features/{complete}?feature_service=churn_training_v1"),
    )
    .await;
    let short: Vec<&str> = TRAINING_V1
        .iter()
        .map(|n| n.split_once("__").unwrap().1)
        .collect();
    assert_eq!(service.features.keys(), short);
    assert_eq!(
        service.features.get("monthly_fee"),
        body.features.get("monthly_fee")
    );
    let (_, full) = lab(
        &server,
        &format!("/features/{complete}?feature_service=churn_training_v1&full_feature_names=true"),
    )
    .await;
    assert_eq!(full.features.keys(), TRAINING_V1);
    assert_eq!(full.statuses.keys(), TRAINING_V1);
    assert_eq!(
        full.features.get("subs_profile_fv__monthly_fee"),
        service.features.get("monthly_fee")
    );
    let (_, full) = lab(
        &server,
        &format!("/features/{complete}?features=payments_agg_90d_fv:failed_payments_90d&full_feature_names=true"),
    )
    .await;
    assert_eq!(
        full.features.keys(),
        ["payments_agg_90d_fv__failed_payments_90d"]
    );

    // An unknown user: 200, every feature null and NOT_FOUND.
    let (_, body) = lab(&server, "/features/0000-NOBODY").await;
    assert_eq!(body.user_id, "0000-NOBODY");
    assert_eq!(body.features.0.len(), 19);
    assert!(body.features.0.iter().all(|(_, v)| v.is_null()));
    assert!(body.statuses.0.iter().all(|(_, s)| s == "NOT_FOUND"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_older_than_the_ttl_are_outside_max_age() {
    let fx = Fixture::new(
        40,
        |repo| repo.edit("feature_views.yaml", "ttl: 3650d", "ttl: 30d"),
        true,
    )
    .await;
    // The edit hit subs_profile_fv, the first view, only.
    let views = fx.repo.read("feature_views.yaml");
    assert_eq!(views.matches("ttl: 30d").count(), 1);
    let server = fx.server().await;
    let user = fx.user("true").await;
    let (_, body) = lab(&server, &format!("/features/{user}")).await;
    for (view, name) in SERVING_V1 {
        let status = body.statuses.get(name);
        if view == "subs_profile_fv" {
            // The 2024 row is in the online table, but older than 30 days.
            assert_eq!(status, "OUTSIDE_MAX_AGE", "{name}");
            assert_eq!(body.features.get(name), &Value::Null, "{name}");
        } else {
            assert!(
                status == "PRESENT" || status == "NULL_VALUE",
                "{name}: {status}"
            );
        }
    }
    let online: i64 =
        sqlx::query_scalar("SELECT count(*) FROM feature_store_online.streamflow_subs_profile_fv")
            .fetch_one(&fx.pool)
            .await
            .unwrap();
    assert_eq!(online, 40, "the rows are there, just too old");
    // Feast's endpoint agrees, and still reports the row's event timestamp.
    let (status, body) = server
        .post_json(
            "/get-online-features",
            &json!({"features": ["subs_profile_fv:monthly_fee", "payments_agg_90d_fv:failed_payments_90d"],
                    "entities": {"user_id": [user]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][1]["statuses"], json!(["OUTSIDE_MAX_AGE"]));
    assert_eq!(body["results"][1]["values"], json!([null]));
    assert_eq!(
        body["results"][1]["event_timestamps"],
        json!(["2024-02-29T00:00:00Z"])
    );
    assert_eq!(body["results"][2]["statuses"], json!(["PRESENT"]));
}

/// The users of the golden files exist in `generated_seeds(GOLDEN_USERS, 2)` (seed 7).
const GOLDEN_USERS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_online_features_speaks_feasts_json() {
    let fx = Fixture::materialized(GOLDEN_USERS).await;
    let server = fx.server().await;
    let dir = common::manifest_dir().join("tests/golden/serving");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(".request.json"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 2, "golden cases went missing");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in cases {
        let name = case
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replace(".request.json", "");
        let request_bytes = std::fs::read(&case).unwrap();
        let request: Value = serde_json::from_slice(&request_bytes).unwrap();
        // Sent as is, WITHOUT a Content-Type header, as Feast's client does.
        let response = server
            .post("/get-online-features")
            .body(request_bytes)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "{name}: {text}");
        let actual: Value = serde_json::from_str(&text).unwrap();

        // Structure, whatever the golden file says.
        let full = request["full_feature_names"].as_bool().unwrap_or(false);
        let expected_names: Vec<String> = match request["features"].as_array() {
            Some(list) => list
                .iter()
                .map(|f| {
                    let (view, feature) = f.as_str().unwrap().split_once(':').unwrap();
                    if full {
                        format!("{view}__{feature}")
                    } else {
                        feature.to_string()
                    }
                })
                .collect(),
            None => {
                assert_eq!(request["feature_service"], "churn_serving_v1");
                SERVING_V1
                    .iter()
                    .map(|(v, f)| {
                        if full {
                            format!("{v}__{f}")
                        } else {
                            f.to_string()
                        }
                    })
                    .collect()
            }
        };
        let names: Vec<&str> = actual["metadata"]["feature_names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(names[0], "user_id", "{name}: the entity column first");
        assert_eq!(
            names[1..],
            expected_names,
            "{name}: features in request order"
        );
        let results = actual["results"].as_array().unwrap();
        assert_eq!(results.len(), names.len(), "{name}");
        let entities = &request["entities"]["user_id"];
        let n = entities.as_array().unwrap().len();
        assert_eq!(&results[0]["values"], entities, "{name}: entity column");
        assert_eq!(results[0]["statuses"], json!(vec!["PRESENT"; n]), "{name}");
        assert_eq!(
            results[0]["event_timestamps"],
            json!(vec![EPOCH; n]),
            "{name}"
        );
        let mut present_per_entity = vec![0; n];
        for result in &results[1..] {
            for e in 0..n {
                let status = result["statuses"][e].as_str().unwrap();
                let ts = result["event_timestamps"][e].as_str().unwrap();
                chrono::DateTime::parse_from_rfc3339(ts)
                    .unwrap_or_else(|err| panic!("{name}: {ts} is not RFC 3339: {err}"));
                match status {
                    "NOT_FOUND" => {
                        assert_eq!(ts, EPOCH, "{name}: a missing row has the epoch");
                        assert!(result["values"][e].is_null());
                    }
                    "PRESENT" => {
                        present_per_entity[e] += 1;
                        assert_eq!(ts, "2024-02-29T00:00:00Z", "{name}");
                        assert!(!result["values"][e].is_null());
                    }
                    "NULL_VALUE" => assert!(result["values"][e].is_null()),
                    other => panic!("{name}: unexpected status {other}"),
                }
            }
        }
        for (e, key) in entities.as_array().unwrap().iter().enumerate() {
            let unknown = key.as_str().unwrap().starts_with("0000-");
            assert_eq!(
                present_per_entity[e] == 0,
                unknown,
                "{name}: entity {key} (known users must be found; the golden users must exist in the generated data)"
            );
        }
        // Duplicates answer the same.
        for result in results {
            for (i, a) in entities.as_array().unwrap().iter().enumerate() {
                for (j, b) in entities.as_array().unwrap().iter().enumerate() {
                    if a == b {
                        assert_eq!(result["values"][i], result["values"][j], "{name}");
                    }
                }
            }
        }

        let expected_path = dir.join(format!("{name}.response.json"));
        if update {
            std::fs::write(&expected_path, format!("{}\n", pretty_in_order(&text))).unwrap();
            continue;
        }
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(&expected_path).unwrap_or_else(|_| "null".into()),
        )
        .unwrap();
        if expected != actual {
            failures.push(format!(
                "--- {name}\nexpected:\n{}\nactual:\n{}\n",
                serde_json::to_string_pretty(&expected).unwrap(),
                serde_json::to_string_pretty(&actual).unwrap()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A JSON Content-Type (or any other) is fine too.
    let response = server
        .post("/get-online-features")
        .header("content-type", "application/json")
        .body(r#"{"features": ["payments_agg_90d_fv:failed_payments_90d"], "entities": {"user_id": ["7960-CNAGS"]}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_the_right_status() {
    let fx = Fixture::new(20, |_| {}, false).await;
    let mut config = fx.config();
    config.server.max_entities = 3;
    config.server.max_body_bytes = 1024;
    let server = TestServer::start(config).await;

    // Unknown feature: 400, naming the valid ones.
    let (status, body) = server
        .get_json("/features/u1?features=subs_profile_fv:nope")
        .await;
    let message = assert_error(status, &body, 400, "UNKNOWN_FEATURE");
    assert!(
        message.contains("nope") && message.contains("months_active, monthly_fee"),
        "{message}"
    );
    let (status, body) = server
        .post_json(
            "/get-online-features",
            &json!({"features": ["subs_profile_fv:nope"], "entities": {"user_id": ["u1"]}}),
        )
        .await;
    let message = assert_error(status, &body, 400, "UNKNOWN_FEATURE");
    assert!(message.contains("months_active"), "{message}");
    let (status, body) = server.get_json("/features/u1?features=ghost_fv:x").await;
    let message = assert_error(status, &body, 400, "UNKNOWN_FEATURE_VIEW");
    assert!(message.contains("subs_profile_fv"), "{message}");

    // Unknown feature service.
    let (status, body) = server.get_json("/features/u1?feature_service=nope").await;
    let message = assert_error(status, &body, 400, "UNKNOWN_FEATURE_SERVICE");
    assert!(message.contains("churn_serving_v1"), "{message}");
    let (status, body) = server
        .post_json(
            "/get-online-features",
            &json!({"feature_service": "nope", "entities": {"user_id": ["u1"]}}),
        )
        .await;
    assert_error(status, &body, 400, "UNKNOWN_FEATURE_SERVICE");

    // Malformed JSON, and JSON of the wrong shape.
    for bad in [
        r#"{"features": ["#,
        "not json",
        r#"{"features": ["subs_profile_fv:monthly_fee"], "entities": {"user_id": ["u1"]}, "surprise": 1}"#,
    ] {
        let response = server
            .post("/get-online-features")
            .body(bad)
            .send()
            .await
            .unwrap();
        let (status, body) = error_of(response).await;
        assert_error(status, &body, 400, "MALFORMED_JSON");
    }

    // Too many entities (server.max_entities = 3).
    let (status, body) = server
        .post_json(
            "/get-online-features",
            &json!({"features": ["subs_profile_fv:monthly_fee"], "entities": {"user_id": ["a", "b", "c", "d"]}}),
        )
        .await;
    let message = assert_error(status, &body, 400, "TOO_MANY_ENTITIES");
    assert!(message.contains("at most 3"), "{message}");
    let (status, _) = server
        .post_json(
            "/get-online-features",
            &json!({"features": ["subs_profile_fv:monthly_fee"], "entities": {"user_id": ["a", "b", "c"]}}),
        )
        .await;
    assert_eq!(status, 200, "3 entities are fine");

    // A body over server.max_body_bytes (1024): 413, JSON, on every route with a body.
    let big = json!({"features": ["subs_profile_fv:monthly_fee"],
                     "entities": {"user_id": vec!["x".repeat(100); 20]}});
    for route in ["/get-online-features", "/historical"] {
        let (status, body) = server.post_json(route, &big).await;
        let message = assert_error(status, &body, 413, "BODY_TOO_LARGE");
        assert!(message.contains("1024"), "{route}: {message}");
    }

    // Unknown route: 404, JSON; wrong method: 405, JSON; a bad query string: 400, JSON.
    let (status, body) = server.get_json("/nope").await;
    let message = assert_error(status, &body, 404, "NOT_FOUND");
    assert!(message.contains("/nope"), "{message}");
    let (status, body) = server.post_json("/features/u1", &json!({})).await;
    assert_error(status, &body, 405, "METHOD_NOT_ALLOWED");
    let (status, body) = server.get_json("/get-online-features").await;
    assert_error(status, &body, 405, "METHOD_NOT_ALLOWED");
    let (status, body) = server
        .get_json("/features/u1?full_feature_names=maybe")
        .await;
    assert_error(status, &body, 400, "BAD_REQUEST");
    // Bad entities.
    let (status, body) = server
        .post_json(
            "/get-online-features",
            &json!({"features": ["subs_profile_fv:monthly_fee"], "entities": {"customer": ["a"]}}),
        )
        .await;
    let message = assert_error(status, &body, 400, "INVALID_ENTITY");
    assert!(message.contains("user_id"), "{message}");

    // The server is fine afterwards.
    let (status, _) = server.get_json("/features/u1").await;
    assert_eq!(status, 200);
}

/// The admin routes with a request body each route accepts (`user` exists).
fn admin_requests(user: &str, day: u32) -> Vec<(&'static str, Value)> {
    vec![
        (
            "/materialize",
            json!({"start_ts": "2024-01-01", "end_ts": "2024-03-01"}),
        ),
        ("/materialize-incremental", json!({"end_ts": "2024-03-01"})),
        (
            "/write-to-online-store",
            json!({"feature_view_name": "payments_agg_90d_fv",
                   "df": {"user_id": [user], "failed_payments_90d": [day],
                          "event_timestamp": [format!("2024-04-{day:02}T00:00:00Z")]},
                   "allow_registry_cache": true}),
        ),
        (
            "/push",
            json!({"push_source_name": "support_agg_90d_source",
                   "df": {"user_id": [user], "support_tickets_90d": [day],
                          "ticket_avg_resolution_hrs_90d": [1.5],
                          "event_timestamp": [format!("2024-04-{day:02}T00:00:00Z")]},
                   "to": "online"}),
        ),
    ]
}

async fn post_with(
    server: &TestServer,
    route: &str,
    body: &Value,
    authorization: Option<&str>,
) -> (u16, Value) {
    let mut request = server.post(route).body(serde_json::to_vec(body).unwrap());
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{route}: {e}: {text}")),
    )
}

async fn online_rows(pool: &PgPool) -> i64 {
    let mut total = 0;
    for view in [
        "subs_profile_fv",
        "usage_agg_30d_fv",
        "payments_agg_90d_fv",
        "support_agg_90d_fv",
    ] {
        total += sqlx::query_scalar::<_, i64>(&format!(
            "SELECT count(*) FROM feature_store_online.streamflow_{view}"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_token() {
    const USERS: u64 = 30;
    let fx = Fixture::new(USERS, |_| {}, false).await;
    let user = fx.user("true").await;
    let mut config = fx.config();
    config.server.admin_token = Some("s3cret".into());
    let server = TestServer::start(config).await;

    // Without the token, or with a wrong one: 401, and nothing is written.
    for (route, body) in admin_requests(&user, 15) {
        for authorization in [None, Some("Bearer wrong"), Some("s3cret"), Some("Bearer ")] {
            let (status, response) = post_with(&server, route, &body, authorization).await;
            let message = assert_error(status, &response, 401, "UNAUTHORIZED");
            assert!(message.contains("Bearer"), "{route}: {message}");
        }
    }
    assert_eq!(
        online_rows(&fx.pool).await,
        0,
        "refused requests wrote nothing"
    );
    let (_, body) = lab(&server, &format!("/features/{user}")).await;
    assert!(body.statuses.0.iter().all(|(_, s)| s == "NOT_FOUND"));

    // With it: /materialize returns the per-view report.
    let token = Some("Bearer s3cret");
    let requests = admin_requests(&user, 15);
    let (status, report) = post_with(&server, requests[0].0, &requests[0].1, token).await;
    assert_eq!(status, 200, "{report}");
    let views = report["views"].as_array().unwrap();
    let names: HashSet<&str> = views.iter().map(|v| v["view"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        HashSet::from([
            "subs_profile_fv",
            "usage_agg_30d_fv",
            "payments_agg_90d_fv",
            "support_agg_90d_fv"
        ])
    );
    for view in views {
        assert_eq!(view["rows"], USERS, "{report}");
        assert_eq!(view["start"], "2024-01-01T00:00:00Z", "{report}");
        assert_eq!(view["end"], "2024-03-01T00:00:00Z", "{report}");
    }
    assert_eq!(report["rows"], 4 * USERS, "{report}");
    assert!(report["elapsed_ms"].is_u64(), "{report}");
    assert_eq!(online_rows(&fx.pool).await, 4 * USERS as i64);
    let snapshot = snapshot_json(&fx.pool, &user).await;
    let (_, body) = lab(&server, &format!("/features/{user}")).await;
    let failed = snapshot
        .iter()
        .find(|(n, _)| *n == "failed_payments_90d")
        .unwrap()
        .1
        .clone()
        .unwrap();
    assert_eq!(body.features.get("failed_payments_90d").to_string(), failed);

    // Incremental: already up to date.
    let (status, report) = post_with(&server, requests[1].0, &requests[1].1, token).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["rows"], 0, "{report}");

    // write-to-online-store (Feast's shape): a newer row wins and is served at once...
    let (status, written) = post_with(&server, requests[2].0, &requests[2].1, token).await;
    assert_eq!(status, 200, "{written}");
    assert_eq!(written, json!({"rows": 1, "written": 1}));
    let read = json!({"features": ["payments_agg_90d_fv:failed_payments_90d",
                                   "support_agg_90d_fv:support_tickets_90d",
                                   "support_agg_90d_fv:ticket_avg_resolution_hrs_90d"],
                      "entities": {"user_id": [user]}});
    let (_, online) = server.post_json("/get-online-features", &read).await;
    assert_eq!(online["results"][1]["values"], json!([15]));
    assert_eq!(
        online["results"][1]["event_timestamps"],
        json!(["2024-04-15T00:00:00Z"])
    );
    // ... an older one is ignored.
    let older = admin_requests(&user, 2);
    let (status, written) = post_with(&server, older[2].0, &older[2].1, token).await;
    assert_eq!(status, 200, "{written}");
    assert_eq!(written, json!({"rows": 1, "written": 0}));
    let (_, body) = lab(&server, &format!("/features/{user}")).await;
    assert_eq!(body.features.get("failed_payments_90d"), 15);

    // push: to every online view over the source.
    let (status, pushed) = post_with(&server, requests[3].0, &requests[3].1, token).await;
    assert_eq!(status, 200, "{pushed}");
    assert_eq!(pushed, json!({"rows": 1, "written": 1}));
    let (_, online) = server.post_json("/get-online-features", &read).await;
    assert_eq!(online["results"][2]["values"], json!([15]));
    assert_eq!(online["results"][3]["values"], json!([1.5]));
    let (status, body) = post_with(
        &server,
        "/push",
        &json!({"push_source_name": "nope", "df": {}}),
        token,
    )
    .await;
    assert_error(status, &body, 400, "UNKNOWN_PUSH_SOURCE");
    drop(server);

    // No token configured: refused, even with a header...
    let mut config = fx.config();
    config.server.admin_token = None;
    let server = TestServer::start(config.clone()).await;
    for (route, body) in admin_requests(&user, 20) {
        for authorization in [None, Some("Bearer s3cret"), Some("Bearer ")] {
            let (status, response) = post_with(&server, route, &body, authorization).await;
            let message = assert_error(status, &response, 401, "UNAUTHORIZED");
            assert!(message.contains("admin_token"), "{message}");
        }
    }
    drop(server);
    // ... except in dev mode on loopback.
    let server = TestServer::start_with(config, true).await;
    for (route, body) in admin_requests(&user, 20) {
        let (status, response) = post_with(&server, route, &body, None).await;
        assert_eq!(status, 200, "{route}: {response}");
    }
    let (_, body) = lab(&server, &format!("/features/{user}")).await;
    assert_eq!(body.features.get("failed_payments_90d"), 20);
    assert_eq!(body.features.get("support_tickets_90d"), 20);
}

/// `POST /historical`: (status, headers, body bytes).
async fn historical(
    server: &TestServer,
    request: &Value,
    accept: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut builder = server
        .post("/historical")
        .body(serde_json::to_vec(request).unwrap());
    if let Some(accept) = accept {
        builder = builder.header("accept", accept);
    }
    let response = builder.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap().to_vec();
    (status, headers, body)
}

#[track_caller]
fn assert_streamed(headers: &reqwest::header::HeaderMap, content_type: &str) {
    assert_eq!(headers["content-type"], content_type);
    assert!(
        headers.get("content-length").is_none(),
        "a streamed body has no length: {headers:?}"
    );
    assert_eq!(
        headers
            .get("transfer-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("chunked"),
        "{headers:?}"
    );
}

/// Runs `skewless historical <args> --out <dir>/<name>` and returns the file.
fn cli_historical(fx: &Fixture, dir: &Path, name: &str, args: &[&str]) -> Vec<u8> {
    let out = dir.join(name);
    skewless(fx.repo.path(), &fx.db)
        .arg("historical")
        .args(args)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    std::fs::read(&out).unwrap()
}

const HISTORICAL_FEATURES: [&str; 5] = [
    "subs_profile_fv:months_active",
    "subs_profile_fv:monthly_fee",
    "subs_profile_fv:plan_stream_tv",
    "usage_agg_30d_fv:watch_hours_30d",
    "support_agg_90d_fv:ticket_avg_resolution_hrs_90d",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn historical_streams_every_format_exactly_like_the_cli() {
    let fx = Fixture::new(60, |_| {}, false).await;
    let server = fx.server().await;
    let dir = tempfile::tempdir().unwrap();
    let features = HISTORICAL_FEATURES.join(",");
    let entity_sql = "SELECT user_id, as_of + interval '36 hours' AS event_timestamp FROM subscriptions_profile_snapshots ORDER BY as_of, user_id";

    // entity_sql, CSV: the CLI's bytes.
    let request = json!({"entity_sql": entity_sql, "features": HISTORICAL_FEATURES,
                         "label": "churn_label", "format": "csv"});
    let (status, headers, csv) = historical(&server, &request, None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&csv));
    assert_streamed(&headers, "text/csv; charset=utf-8");
    assert_eq!(headers["x-skewless-rows"], "120");
    let cli = cli_historical(
        &fx,
        dir.path(),
        "sql.csv",
        &[
            "--entity-sql",
            entity_sql,
            "--features",
            &features,
            "--label",
            "churn_label",
        ],
    );
    assert_eq!(
        String::from_utf8(csv.clone()).unwrap(),
        String::from_utf8(cli).unwrap()
    );
    let text = String::from_utf8(csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "user_id,event_timestamp,months_active,monthly_fee,plan_stream_tv,watch_hours_30d,ticket_avg_resolution_hrs_90d,churn_label"
    );
    assert_eq!(lines.len(), 121);

    // entities given inline (duplicates, an unknown user, a time before any data): the
    // CLI's bytes for the same rows in a file.
    let users: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM users ORDER BY user_id LIMIT 2")
            .fetch_all(&fx.pool)
            .await
            .unwrap();
    let keys = [
        users[0].as_str(),
        users[1].as_str(),
        "0000-NOBODY",
        users[0].as_str(),
        users[1].as_str(),
    ];
    let times = [
        "2024-02-15",
        "2024-03-01T12:00:00Z",
        "2024-03-01",
        "2024-02-15",
        "2023-06-01",
    ];
    let request = json!({"entities": {"user_id": keys, "event_timestamp": times},
                         "features": HISTORICAL_FEATURES, "full_feature_names": true});
    let (status, headers, inline) = historical(&server, &request, None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&inline));
    assert_streamed(&headers, "text/csv; charset=utf-8");
    let entities = dir.path().join("entities.csv");
    let mut file = String::from("user_id,event_timestamp\n");
    for (k, t) in keys.iter().zip(times) {
        file.push_str(&format!("{k},{t}\n"));
    }
    std::fs::write(&entities, file).unwrap();
    let cli = cli_historical(
        &fx,
        dir.path(),
        "inline.csv",
        &[
            "--entities",
            entities.to_str().unwrap(),
            "--features",
            &features,
            "--full-feature-names",
        ],
    );
    let inline = String::from_utf8(inline).unwrap();
    assert_eq!(inline, String::from_utf8(cli).unwrap());
    let rows: Vec<&str> = inline.lines().collect();
    assert!(rows[0].starts_with("user_id,event_timestamp,subs_profile_fv__months_active,"));
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[1], rows[4], "duplicates are kept");
    assert!(rows[3].starts_with("0000-NOBODY,") && rows[3].ends_with(",,,,"));
    assert!(rows[5].ends_with(",,,,"), "before any data: NULLs");

    // JSON lines: by `format`, and by `Accept`, the same bytes; values equal the CSV's.
    let request = json!({"entity_sql": entity_sql, "features": HISTORICAL_FEATURES,
                         "label": "churn_label", "format": "jsonl"});
    let (status, headers, jsonl) = historical(&server, &request, None).await;
    assert_eq!(status, 200);
    assert_streamed(&headers, "application/x-ndjson");
    let mut by_accept = request.clone();
    by_accept.as_object_mut().unwrap().remove("format");
    let (status, headers, accepted) =
        historical(&server, &by_accept, Some("application/x-ndjson")).await;
    assert_eq!(status, 200);
    assert_streamed(&headers, "application/x-ndjson");
    assert_eq!(jsonl, accepted);
    let jsonl = String::from_utf8(jsonl).unwrap();
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(jsonl.lines().count(), 120);
    for (line, csv_line) in jsonl.lines().zip(&lines[1..]) {
        let object: Value = serde_json::from_str(line).unwrap();
        assert_eq!(object.as_object().unwrap().len(), header.len(), "{line}");
        for (column, cell) in header.iter().zip(csv_line.split(',')) {
            let value = &object[*column];
            let same = match value {
                Value::Null => cell.is_empty(),
                Value::String(s) => s == cell,
                Value::Bool(b) => b.to_string() == cell,
                Value::Number(n) => n.as_f64() == cell.parse::<f64>().ok(),
                _ => false,
            };
            assert!(same, "{column}: {value} in JSON, {cell:?} in CSV");
        }
        // Float32 prints the same in both.
        let watch = csv_line.split(',').nth(5).unwrap();
        if !watch.is_empty() {
            assert!(
                line.contains(&format!("\"watch_hours_30d\":{watch},")),
                "{line}"
            );
        }
    }

    // Parquet, read back.
    let request = json!({"entity_sql": entity_sql, "features": HISTORICAL_FEATURES,
                         "label": "churn_label", "format": "parquet"});
    let (status, headers, parquet) = historical(&server, &request, None).await;
    assert_eq!(status, 200);
    assert_streamed(&headers, "application/vnd.apache.parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(parquet),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut parquet_rows = 0;
    for batch in reader {
        let batch = batch.unwrap();
        let names: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, header);
        use arrow_array::{Array, BooleanArray, Float32Array, Int64Array, StringArray};
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let months = batch
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let fees = batch
            .column(3)
            .as_any()
            .downcast_ref::<Float32Array>()
            .unwrap();
        let tv = batch
            .column(4)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap();
        for r in 0..batch.num_rows() {
            let cells: Vec<&str> = lines[1 + parquet_rows + r].split(',').collect();
            let render = |null: bool, text: String| if null { String::new() } else { text };
            assert_eq!(render(ids.is_null(r), ids.value(r).to_string()), cells[0]);
            assert_eq!(
                render(months.is_null(r), months.value(r).to_string()),
                cells[2]
            );
            assert_eq!(render(fees.is_null(r), render_f32(fees.value(r))), cells[3]);
            assert_eq!(render(tv.is_null(r), tv.value(r).to_string()), cells[4]);
        }
        parquet_rows += batch.num_rows();
    }
    assert_eq!(parquet_rows, 120);

    // Bad requests: 400 JSON, before any byte of a training set.
    for (request, code, needle) in [
        (
            json!({"entity_sql": entity_sql, "features": ["subs_profile_fv:nope"]}),
            "UNKNOWN_FEATURE",
            "months_active",
        ),
        (
            json!({"entities": {"user_id": ["a"], "event_timestamp": ["2024-01-01"]},
                   "features": ["subs_profile_fv:nope"], "format": "parquet"}),
            "UNKNOWN_FEATURE",
            "months_active",
        ),
        (
            json!({"entity_sql": entity_sql, "feature_service": "nope"}),
            "UNKNOWN_FEATURE_SERVICE",
            "churn_training_v1",
        ),
        (
            json!({"entity_sql": "SELECT user_id FROM users", "features": HISTORICAL_FEATURES}),
            "INVALID_ENTITIES",
            "event_timestamp",
        ),
        (
            json!({"entity_sql": entity_sql, "features": HISTORICAL_FEATURES, "format": "xlsx"}),
            "INVALID_FORMAT",
            "xlsx",
        ),
    ] {
        let response = server
            .post("/historical")
            .body(request.to_string())
            .send()
            .await
            .unwrap();
        assert!(response.headers().get("x-skewless-rows").is_none());
        let (status, body) = error_of(response).await;
        let message = assert_error(status, &body, 400, code);
        assert!(message.contains(needle), "{message}");
    }
}

/// Entity rows for a long training set: every user 100 times per month.
const MANY_ROWS_SQL: &str = "SELECT user_id, as_of + g * interval '1 minute' AS event_timestamp FROM subscriptions_profile_snapshots, generate_series(1, 100) g";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_cancels_the_query() {
    let fx = Fixture::materialized(1000).await;
    let server = fx.server().await;
    let request = json!({"entity_sql": MANY_ROWS_SQL, "feature_service": "churn_serving_v1"});
    let mut response = server
        .post("/historical")
        .body(request.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["x-skewless-rows"], "200000");
    let first = response.chunk().await.unwrap().expect("a first chunk");
    assert!(first.starts_with(b"user_id,event_timestamp,months_active,"));
    // The query is still running, on each of the two backends the 200k rows are split
    // over (the default), since the client holds back the stream...
    assert_eq!(fx.active_training_queries().await, 2);
    drop(response);
    // ... and stops soon after the client is gone.
    let started = Instant::now();
    while fx.active_training_queries().await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the training-set query kept running after the client left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The server carries on.
    let (status, _) = server.get_json("/health").await;
    assert_eq!(status, 200);
    let user = fx.user("true").await;
    let (_, body) = lab(&server, &format!("/features/{user}")).await;
    assert_eq!(body.statuses.get("months_active"), "PRESENT");
    let (status, _, small) = historical(
        &server,
        &json!({"entities": {"user_id": [user], "event_timestamp": ["2024-03-01"]},
                "feature_service": "churn_training_v1"}),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(small).unwrap().lines().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_gives_503_then_recovers() {
    let fx = Fixture::materialized(30).await;
    let user = fx.user("true").await;
    let mut proxy = TcpProxy::to_postgres().await;
    let config = config_for(fx.repo.path(), &proxy.url(&fx.db.url));
    assert_eq!(config.server.db_acquire_timeout_ms, 1000);
    let server = TestServer::start(config).await;
    let path = format!("/features/{user}");

    let (status, body) = server.get_json("/ready").await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = lab(&server, &path).await;
    assert_eq!(body.statuses.get("months_active"), "PRESENT");

    proxy.down().await;
    for _ in 0..2 {
        let started = Instant::now();
        let (status, body) = server.get_json(&path).await;
        assert_error(status, &body, 503, "DATABASE_UNAVAILABLE");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "503 must come fast ({:?})",
            started.elapsed()
        );
    }
    let (status, body) = server
        .post_json(
            "/get-online-features",
            &json!({"features": ["subs_profile_fv:monthly_fee"], "entities": {"user_id": [user]}}),
        )
        .await;
    assert_error(status, &body, 503, "DATABASE_UNAVAILABLE");
    let (status, body) = server.get_json("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["database"], false);
    let (status, body) = server.get_json("/health").await;
    assert_eq!(status, 200, "{body}");

    proxy.up().await;
    let started = Instant::now();
    loop {
        let response = server.get(&path).send().await.unwrap();
        if response.status().as_u16() == 200 {
            break;
        }
        assert_eq!(response.status().as_u16(), 503);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the server must recover without a restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, body) = lab(&server, &path).await;
    assert!(body.statuses.0.iter().all(|(_, s)| s != "NOT_FOUND"));
    let (status, body) = server.get_json("/ready").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_responses() {
    let fx = Fixture::new(1000, |_| {}, false).await;
    let mut server = fx.server().await;
    let request = json!({"entity_sql": MANY_ROWS_SQL, "feature_service": "churn_serving_v1"});
    let mut response = server
        .post("/historical")
        .body(request.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let rows: usize = response.headers()["x-skewless-rows"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rows, 200_000);
    let mut body = response.chunk().await.unwrap().unwrap().to_vec();

    server.trigger_shutdown();
    // New connections are refused while the response is still going.
    let started = Instant::now();
    while tokio::net::TcpStream::connect(server.addr).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "still accepting connections after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !server.is_finished(),
        "the in-flight response keeps the server up"
    );
    // The in-flight response completes, read slowly.
    let mut chunks = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
        chunks += 1;
        if chunks % 64 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let text = String::from_utf8(body).unwrap();
    assert!(text.ends_with('\n'));
    assert_eq!(text.lines().count(), rows + 1, "every row, then the end");
    assert_eq!(text.lines().last().unwrap().split(',').count(), 21);
    server.join(Duration::from_secs(10)).await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "nothing listens after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route_and_metrics_count_requests() {
    let fx = Fixture::materialized(20).await;
    let server = fx.server().await;
    let user = fx.user("true").await;
    for _ in 0..3 {
        lab(&server, &format!("/features/{user}")).await;
    }
    let (status, _) = server
        .get_json("/features/u?features=subs_profile_fv:nope")
        .await;
    assert_eq!(status, 400);

    let (status, doc) = server.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    for (route, method) in [
        ("/features/{id}", "get"),
        ("/get-online-features", "post"),
        ("/historical", "post"),
        ("/materialize", "post"),
        ("/materialize-incremental", "post"),
        ("/write-to-online-store", "post"),
        ("/push", "post"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
    ] {
        assert!(
            paths.get(route).and_then(|p| p.get(method)).is_some(),
            "{method} {route} missing from the OpenAPI document: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }

    let response = server.get("/metrics").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    let series = |name: &str, needles: &[&str]| {
        text.lines()
            .any(|l| l.starts_with(&format!("{name}{{")) && needles.iter().all(|n| l.contains(n)))
    };
    assert!(
        series(
            "http_requests_total",
            &[
                "route=\"/features/{id}\"",
                "method=\"GET\"",
                "status=\"200\""
            ]
        ),
        "{text}"
    );
    assert!(
        series(
            "http_requests_total",
            &["route=\"/features/{id}\"", "status=\"400\""]
        ),
        "{text}"
    );
    assert!(
        series(
            "http_request_duration_seconds_bucket",
            &["route=\"/features/{id}\"", "le="]
        ),
        "{text}"
    );
    assert!(
        series(
            "http_request_duration_seconds_count",
            &["route=\"/features/{id}\""]
        ),
        "{text}"
    );
    assert!(
        series("db_pool_connections", &["pool=\"online\""]),
        "{text}"
    );
    assert!(
        series("db_pool_connections", &["pool=\"offline\""]),
        "{text}"
    );
    // One series for the route, not one per entity.
    assert!(!text.contains(&user), "{text}");
}
