//! AWS shared configuration files: the keys, region and endpoint of a named profile, as the
//! AWS CLI reads them (`AWS_PROFILE`, `~/.aws/credentials`, `~/.aws/config`), for stores the
//! environment variables do not describe. Environment variables win over the files, key by key.
//! Profiles that need a program to run (`credential_process`, SSO, an assumed role) are refused
//! with a message rather than half-read.

use object_store::aws::AmazonS3ConfigKey;
use std::collections::HashMap;
use std::path::PathBuf;

/// The settings of the profile in effect, to apply over the builder's environment. `env` reads
/// an environment variable (injected for tests). An explicitly named profile that neither file
/// holds, or that only a program can resolve, is an error (its message names the files, never
/// a secret).
pub(crate) fn aws_profile(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(AmazonS3ConfigKey, String)>, String> {
    let named = env("AWS_PROFILE").or_else(|| env("AWS_DEFAULT_PROFILE"));
    let name = named.clone().unwrap_or_else(|| "default".into());
    let home = env("HOME").map(PathBuf::from);
    let file = |var: &str, rel: &str| -> Option<PathBuf> {
        env(var).map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".aws").join(rel)))
    };
    let credentials = file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config = file("AWS_CONFIG_FILE", "config");
    let read = |p: &Option<PathBuf>, header: &dyn Fn(&str) -> bool| {
        p.as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| section(&text, header))
    };
    // In `config` a profile is `[profile name]` (`[default]` for the default one).
    let from_config = read(&config, &|h: &str| {
        h.strip_prefix("profile").map(str::trim) == Some(name.as_str())
            || (name == "default" && h == "default")
    });
    let from_credentials = read(&credentials, &|h: &str| h == name);
    if from_config.is_none() && from_credentials.is_none() {
        return match named {
            Some(n) => Err(format!(
                "AWS profile {n:?} is in neither {} nor {}",
                shown(&credentials),
                shown(&config)
            )),
            None => Ok(vec![]),
        };
    }
    let mut values = from_config.unwrap_or_default();
    values.extend(from_credentials.unwrap_or_default());
    let set = |vars: &[&str]| vars.iter().any(|v| env(v).is_some_and(|s| !s.is_empty()));
    let keys = [
        ("aws_access_key_id", AmazonS3ConfigKey::AccessKeyId, &["AWS_ACCESS_KEY_ID"][..]),
        ("aws_secret_access_key", AmazonS3ConfigKey::SecretAccessKey, &["AWS_SECRET_ACCESS_KEY"]),
        ("aws_session_token", AmazonS3ConfigKey::Token, &["AWS_SESSION_TOKEN"]),
        ("region", AmazonS3ConfigKey::Region, &["AWS_REGION", "AWS_DEFAULT_REGION"]),
        ("endpoint_url", AmazonS3ConfigKey::Endpoint, &["AWS_ENDPOINT", "AWS_ENDPOINT_URL"]),
    ];
    let has_keys = values.contains_key("aws_access_key_id") || set(&["AWS_ACCESS_KEY_ID"]);
    if named.is_some() && !has_keys {
        if let Some(k) = ["credential_process", "sso_start_url", "sso_session", "role_arn"]
            .into_iter()
            .find(|k| values.contains_key(*k))
        {
            return Err(format!(
                "AWS profile {name:?} gets its credentials through {k}, which Tidewater does not run: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), e.g. from `aws configure export-credentials --profile {name} --format env`"
            ));
        }
    }
    Ok(keys
        .into_iter()
        .filter(|(_, _, vars)| !set(vars))
        .filter_map(|(file_key, key, _)| values.get(file_key).map(|v| (key, v.clone())))
        .collect())
}

fn shown(p: &Option<PathBuf>) -> String {
    p.as_ref().map_or_else(|| "~/.aws/…".into(), |p| p.display().to_string())
}

/// The `key = value` lines of the first section whose header matches, keys lowercased.
fn section(text: &str, header: &dyn Fn(&str) -> bool) -> Option<HashMap<String, String>> {
    let mut found: Option<HashMap<String, String>> = None;
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if found.is_some() {
                break;
            }
            inside = header(h.trim());
            if inside {
                found = Some(HashMap::new());
            }
            continue;
        }
        if let (true, Some(map), Some((k, v))) = (inside, found.as_mut(), line.split_once('=')) {
            map.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(credentials: &str, config: &str) -> (tempfile::TempDir, HashMap<String, String>) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("credentials"), credentials).expect("write");
        std::fs::write(dir.path().join("config"), config).expect("write");
        let mut env = HashMap::new();
        env.insert(
            "AWS_SHARED_CREDENTIALS_FILE".to_string(),
            dir.path().join("credentials").display().to_string(),
        );
        env.insert("AWS_CONFIG_FILE".into(), dir.path().join("config").display().to_string());
        (dir, env)
    }

    fn get(env: &HashMap<String, String>) -> Result<Vec<(AmazonS3ConfigKey, String)>, String> {
        aws_profile(&|k| env.get(k).cloned())
    }

    const CREDENTIALS: &str = "[default]\naws_access_key_id = AKDEF\naws_secret_access_key = sdef\n\n# a comment\n[tw]\nAWS_ACCESS_KEY_ID=AKTW\naws_secret_access_key = stw\naws_session_token = tok\n";
    const CONFIG: &str = "[default]\nregion = us-east-1\n[profile tw]\nregion = eu-west-3\nendpoint_url = http://127.0.0.1:9000\n[profile sso]\nsso_start_url = https://x\n";

    #[test]
    fn a_named_profile_brings_its_keys_region_and_endpoint() {
        let (_d, mut env) = files(CREDENTIALS, CONFIG);
        env.insert("AWS_PROFILE".into(), "tw".into());
        let got = get(&env).expect("profile");
        let want = [
            (AmazonS3ConfigKey::AccessKeyId, "AKTW"),
            (AmazonS3ConfigKey::SecretAccessKey, "stw"),
            (AmazonS3ConfigKey::Token, "tok"),
            (AmazonS3ConfigKey::Region, "eu-west-3"),
            (AmazonS3ConfigKey::Endpoint, "http://127.0.0.1:9000"),
        ];
        assert_eq!(got, want.map(|(k, v)| (k, v.to_string())).to_vec());
        // Environment variables win, key by key.
        env.insert("AWS_REGION".into(), "ap-south-1".into());
        env.insert("AWS_ACCESS_KEY_ID".into(), "AKENV".into());
        let got = get(&env).expect("profile");
        assert!(got.iter().all(|(k, _)| {
            !matches!(k, AmazonS3ConfigKey::Region | AmazonS3ConfigKey::AccessKeyId)
        }));
        assert!(got.contains(&(AmazonS3ConfigKey::SecretAccessKey, "stw".into())));
    }

    #[test]
    fn the_default_profile_applies_without_a_name_and_a_missing_one_is_said() {
        let (_d, mut env) = files(CREDENTIALS, CONFIG);
        let got = get(&env).expect("default");
        assert!(got.contains(&(AmazonS3ConfigKey::AccessKeyId, "AKDEF".into())));
        assert!(got.contains(&(AmazonS3ConfigKey::Region, "us-east-1".into())));
        env.insert("AWS_PROFILE".into(), "nope".into());
        let e = get(&env).expect_err("missing");
        assert!(e.contains("\"nope\"") && e.contains("credentials"), "{e}");
        env.insert("AWS_PROFILE".into(), "sso".into());
        let e = get(&env).expect_err("sso");
        assert!(e.contains("sso_start_url"), "{e}");
        // No files and no name: nothing to add, no error.
        let none: HashMap<String, String> =
            [("HOME".to_string(), "/nonexistent".to_string())].into();
        assert_eq!(get(&none), Ok(vec![]));
    }
}
