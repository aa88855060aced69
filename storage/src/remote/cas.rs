//! Compare-and-swap where it is real: the object store's conditional puts (`If-None-Match: *`
//! to create, `If-Match: <etag>` to replace), or etcd's transactions when the store ignores
//! them (Garage and many self-hosted stores: a second create-only put succeeds there).
//!
//! The commit log and the writer lease live here; the data files never do.

use crate::error::{Error, Result};
use base64::Engine as _;
use bytes::Bytes;
use futures::TryStreamExt as _;
use object_store::path::Path as OPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, UpdateVersion};
use std::sync::Arc;

/// What a value was read at: an ETag (object store) or a modification revision (etcd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub(crate) String);

/// Where compare-and-swap happens.
#[derive(Debug, Clone)]
pub(crate) enum Cas {
    /// The object store's own conditional puts.
    Store { store: Arc<dyn ObjectStore>, prefix: OPath, url: String },
    /// etcd (v3 JSON gateway).
    Etcd(Etcd),
}

/// An etcd endpoint and the prefix of this dataset's keys.
#[derive(Debug, Clone)]
pub(crate) struct Etcd {
    client: reqwest::Client,
    endpoint: String,
    prefix: String,
}

/// The precondition of a conditional put.
#[derive(Debug, Clone, Copy)]
enum Expect<'a> {
    /// The key does not exist.
    Absent,
    /// The key is at this version.
    At(&'a Version),
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| Error::Coordinator { what: format!("etcd sent invalid base64: {e}") })
}

/// The first key after every key starting with `p` (etcd's `range_end` of a prefix).
fn prefix_end(p: &str) -> Vec<u8> {
    let mut end = p.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    async fn call(&self, method: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let url = format!("{}/v3/kv/{method}", self.endpoint);
        let failed = |e: reqwest::Error| Error::Coordinator { what: format!("etcd {url}: {e}") };
        let resp = self.client.post(&url).json(&body).send().await.map_err(failed)?;
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.map_err(failed)?;
        if !status.is_success() {
            return Err(Error::Coordinator { what: format!("etcd {url}: {status} {v}") });
        }
        Ok(v)
    }

    fn key(&self, key: &str) -> String {
        format!("{}/{key}", self.prefix)
    }

    /// A transaction: puts `value` at `key` if `expect` holds; the new revision, or `None`.
    async fn put_if(&self, key: &str, value: &[u8], expect: Expect<'_>) -> Result<Option<Version>> {
        let k = b64(self.key(key).as_bytes());
        let compare = match expect {
            Expect::Absent => serde_json::json!({"target": "CREATE", "create_revision": "0"}),
            Expect::At(v) => serde_json::json!({"target": "MOD", "mod_revision": v.0}),
        };
        let mut c = compare;
        c["key"] = k.clone().into();
        c["result"] = "EQUAL".into();
        let v = self
            .call(
                "txn",
                serde_json::json!({
                    "compare": [c],
                    "success": [{"request_put": {"key": k, "value": b64(value)}}],
                }),
            )
            .await?;
        if !v["succeeded"].as_bool().unwrap_or(false) {
            return Ok(None);
        }
        // The put's modification revision is the transaction's revision.
        match v["header"]["revision"].as_str() {
            Some(r) => Ok(Some(Version(r.to_string()))),
            None => Err(Error::Coordinator { what: format!("etcd txn without a revision: {v}") }),
        }
    }
}

impl Cas {
    /// etcd at `endpoint` (`http://host:2379`), keys under `prefix`.
    pub(crate) fn etcd(endpoint: &str, prefix: String) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| Error::Coordinator { what: format!("etcd client: {e}") })?;
        Ok(Self::Etcd(Etcd {
            client,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            prefix,
        }))
    }

    /// Where it lives, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Store { url, .. } => format!("{url} (conditional puts)"),
            Self::Etcd(e) => format!("etcd {} under {}", e.endpoint, e.prefix),
        }
    }

    fn store_path(prefix: &OPath, key: &str) -> OPath {
        key.split('/').fold(prefix.clone(), |p, part| p.join(part))
    }

    /// The value at `key` and its version.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<(Bytes, Version)>> {
        match self {
            Self::Store { store, prefix, url } => {
                let path = Self::store_path(prefix, key);
                match store.get(&path).await {
                    Ok(r) => {
                        let etag = r.meta.e_tag.clone().unwrap_or_default();
                        let bytes = r.bytes().await.map_err(Error::store("reading", url, &path))?;
                        Ok(Some((bytes, Version(etag))))
                    }
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(Error::store("reading", url, &path)(e)),
                }
            }
            Self::Etcd(etcd) => {
                let k = etcd.key(key);
                let v = etcd.call("range", serde_json::json!({ "key": b64(k.as_bytes()) })).await?;
                let Some(kv) = v["kvs"].as_array().and_then(|a| a.first()) else { return Ok(None) };
                let value = unb64(kv["value"].as_str().unwrap_or_default())?;
                let rev = kv["mod_revision"].as_str().unwrap_or("0").to_string();
                Ok(Some((Bytes::from(value), Version(rev))))
            }
        }
    }

    /// Puts `value` at `key` if `expect` holds: the new version, or `None` when it did not
    /// (another writer was first, or changed it since).
    async fn put_if(&self, key: &str, value: Bytes, expect: Expect<'_>) -> Result<Option<Version>> {
        let (store, prefix, url) = match self {
            Self::Store { store, prefix, url } => (store, prefix, url),
            Self::Etcd(etcd) => return etcd.put_if(key, &value, expect).await,
        };
        let path = Self::store_path(prefix, key);
        let (mode, op) = match expect {
            Expect::Absent => (PutMode::Create, "creating"),
            Expect::At(v) => (
                PutMode::Update(UpdateVersion { e_tag: Some(v.0.clone()), version: None }),
                "replacing",
            ),
        };
        let opts = PutOptions { mode, ..Default::default() };
        match store.put_opts(&path, value.clone().into(), opts).await {
            Ok(r) => match r.e_tag {
                Some(e) => Ok(Some(Version(e))),
                // A store that names no ETag: the one it reads back, if the value is ours.
                None => Ok(self.get(key).await?.filter(|(b, _)| *b == value).map(|(_, v)| v)),
            },
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store(op, url, &path)(e)),
        }
    }

    /// Creates `key` unless it exists: its version, or `None` when it did (another writer was
    /// first).
    pub(crate) async fn create(&self, key: &str, value: Bytes) -> Result<Option<Version>> {
        self.put_if(key, value, Expect::Absent).await
    }

    /// Replaces `key` if it is still at `version`: the new version, or `None` when it changed
    /// since.
    pub(crate) async fn update(
        &self,
        key: &str,
        value: Bytes,
        version: &Version,
    ) -> Result<Option<Version>> {
        self.put_if(key, value, Expect::At(version)).await
    }

    /// Every `(key, value)` under `dir` whose key sorts after `dir/after` (all when `None`), in
    /// key order; keys relative to the prefix.
    pub(crate) async fn list(
        &self,
        dir: &str,
        after: Option<&str>,
    ) -> Result<Vec<(String, Bytes)>> {
        match self {
            Self::Store { store, prefix, url } => {
                let base = Self::store_path(prefix, dir);
                let metas: Vec<object_store::ObjectMeta> = match after {
                    Some(a) => {
                        let offset = Self::store_path(prefix, &format!("{dir}/{a}"));
                        store.list_with_offset(Some(&base), &offset).try_collect().await
                    }
                    None => store.list(Some(&base)).try_collect().await,
                }
                .map_err(Error::store("listing", url, &base))?;
                let mut keys: Vec<OPath> = metas.into_iter().map(|m| m.location).collect();
                keys.sort();
                let fetches = keys.into_iter().map(|path| {
                    let store = store.clone();
                    async move {
                        let bytes = store.get(&path).await?.bytes().await?;
                        Ok::<_, object_store::Error>((path, bytes))
                    }
                });
                let got: Vec<(OPath, Bytes)> = futures::stream::iter(fetches)
                    .buffered(16)
                    .try_collect()
                    .await
                    .map_err(Error::store("reading", url, &base))?;
                let strip = format!("{}/", prefix.as_ref());
                Ok(got
                    .into_iter()
                    .map(|(p, b)| {
                        let s = p.as_ref();
                        (s.strip_prefix(&strip).unwrap_or(s).to_string(), b)
                    })
                    .collect())
            }
            Self::Etcd(etcd) => {
                let from = match after {
                    // The first key after `after`: `after` with a zero byte appended.
                    Some(a) => {
                        let mut k = etcd.key(&format!("{dir}/{a}")).into_bytes();
                        k.push(0);
                        k
                    }
                    None => etcd.key(&format!("{dir}/")).into_bytes(),
                };
                let end = prefix_end(&etcd.key(&format!("{dir}/")));
                let v = etcd
                    .call(
                        "range",
                        serde_json::json!({
                            "key": b64(&from), "range_end": b64(&end), "sort_order": "ASCEND", "sort_target": "KEY",
                        }),
                    )
                    .await?;
                let strip = format!("{}/", etcd.prefix);
                let mut out = Vec::new();
                for kv in v["kvs"].as_array().into_iter().flatten() {
                    let k = String::from_utf8(unb64(kv["key"].as_str().unwrap_or_default())?)
                        .map_err(|e| Error::Coordinator { what: format!("etcd key: {e}") })?;
                    let value = unb64(kv["value"].as_str().unwrap_or_default())?;
                    out.push((
                        k.strip_prefix(&strip).unwrap_or(&k).to_string(),
                        Bytes::from(value),
                    ));
                }
                Ok(out)
            }
        }
    }
}

use futures::StreamExt as _;

/// Whether the store refuses a second create-only put of one key (and a put with a wrong
/// ETag): if not, its "conditional" writes are not, and the log needs a coordinator.
pub(crate) async fn store_honours_conditional_puts(
    store: &Arc<dyn ObjectStore>,
    prefix: &OPath,
    url: &str,
) -> Result<bool> {
    let cas = Cas::Store { store: store.clone(), prefix: prefix.clone(), url: url.to_string() };
    let key = format!("_probe/{:016x}", rand::random::<u64>());
    let first = cas.create(&key, Bytes::from_static(b"1")).await?;
    let second = cas.create(&key, Bytes::from_static(b"2")).await;
    let third =
        cas.update(&key, Bytes::from_static(b"3"), &Version("\"not-the-etag\"".into())).await;
    let _ = store.delete(&Cas::store_path(prefix, &key)).await;
    Ok(first.is_some() && matches!(second, Ok(None)) && matches!(third, Ok(None)))
}
