//! Authentication, black-box: registration, login, refresh rotation and
//! reuse detection, logout, the events they leave, access-token
//! verification against forged tokens, `/me`, and rate limits.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::{Method, Response};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

// ---------------------------------------------------------------- helpers

fn unique_email() -> String {
    format!("a{}@example.com", Uuid::new_v4().simple())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn register_with(app: &TestApp, email: &str, password: &str, name: &str) -> Response {
    app.request(Method::POST, "/auth/register")
        .json(&json!({"email": email, "password": password, "display_name": name}))
        .send()
        .await
        .unwrap()
}

async fn refresh(app: &TestApp, token: &str) -> Response {
    app.request(Method::POST, "/auth/refresh")
        .json(&json!({ "refresh_token": token }))
        .send()
        .await
        .unwrap()
}

async fn logout(app: &TestApp, access: &str, refresh_token: &str) -> Response {
    app.request(Method::POST, "/auth/logout")
        .bearer_auth(access)
        .json(&json!({ "refresh_token": refresh_token }))
        .send()
        .await
        .unwrap()
}

async fn me(app: &TestApp, access: &str) -> Response {
    app.request(Method::GET, "/me")
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
}

/// A token pair from a successful answer: (access, refresh).
async fn pair(r: Response) -> (String, String) {
    let status = r.status();
    let b = body(r).await;
    assert_eq!(status, 200, "body {b}");
    (
        b["access_token"].as_str().unwrap().to_owned(),
        b["refresh_token"].as_str().unwrap().to_owned(),
    )
}

fn header(r: &Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

fn header_num(r: &Response, name: &str) -> u64 {
    header(r, name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
}

/// The (unverified) claims of a JWT.
fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Every claim a valid access token of ours has, for `user`.
fn good_claims(user: Uuid) -> Value {
    let now = now();
    json!({
        "iss": "tandem",
        "aud": "tandem-api",
        "sub": user.to_string(),
        "exp": now + 600,
        "nbf": now,
        "iat": now,
        "jti": Uuid::new_v4().to_string(),
        "sid": Uuid::new_v4().to_string(),
    })
}

fn sign(claims: &Value, alg: Algorithm, key: &[u8]) -> String {
    encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).unwrap()
}

fn sign_ours(claims: &Value) -> String {
    sign(claims, Algorithm::HS256, JWT_SECRET)
}

/// `GET /me` with `token` must be refused as an invalid token.
async fn assert_invalid_token(app: &TestApp, token: &str, case: &str) {
    let r = me(app, token).await;
    assert_eq!(r.status(), 401, "{case}: expected 401");
    assert_eq!(
        header(&r, "www-authenticate").as_deref(),
        Some("Bearer"),
        "{case}"
    );
    let b = body(r).await;
    assert_eq!(b["code"], "invalid_token", "{case}: body {b}");
}

fn field_names(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors list in {problem}"))
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

async fn session_events(app: &TestApp, user: Uuid) -> Vec<(String, String, Value, Value)> {
    sqlx::query_as(
        "SELECT event_type, aggregate_id, payload, metadata FROM events
          WHERE aggregate_type = 'Session' AND metadata->>'actor_id' = $1
          ORDER BY global_id",
    )
    .bind(user.to_string())
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

// ----------------------------------------------------------- registration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_answers_201_with_the_user_its_position_and_a_location() {
    let app = spawn_app().await;
    let email = unique_email();
    let r = register_with(&app, &email, PASSWORD, "Ada Lovelace").await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "location").as_deref(), Some("/api/v1/me"));
    let position_header = header(&r, "tandem-position");
    let b = body(r).await;
    let id: Uuid = b["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(b["email"], email);
    assert_eq!(b["display_name"], "Ada Lovelace");
    let position = b["position"].as_i64().expect("position is a number");
    assert!(position > 0);
    assert_eq!(position_header, Some(position.to_string()));
    assert!(b.get("password").is_none() && b.get("password_hash").is_none());
    // The account can log in and is who `/me` says.
    let (access, _) = pair(app.login(&email, PASSWORD).await).await;
    let b = body(me(&app, &access).await).await;
    assert_eq!(b["id"], id.to_string());
    assert_eq!(b["email"], email);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_is_taken_whatever_its_case_or_surrounding_spaces() {
    let app = spawn_app().await;
    let local = format!("dup{}", Uuid::new_v4().simple());
    let email = format!("{local}@example.com");
    assert_eq!(app.register(&email).await.status(), 201);
    for again in [
        email.clone(),
        format!("{}@EXAMPLE.com", local.to_uppercase()),
        format!("  {email}  "),
        format!("\t{}@Example.Com ", local.to_uppercase()),
    ] {
        let r = app.register(&again).await;
        let b = problem(r, 409, "email_taken").await;
        assert!(b["detail"].is_string(), "{again:?}: {b}");
    }
    let accounts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM accounts WHERE email_normalized = $1")
            .bind(&email)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(accounts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_must_have_between_10_and_128_characters() {
    let app = spawn_app().await;
    for (len, accepted) in [(9, false), (10, true), (128, true), (129, false)] {
        let password = "p".repeat(len);
        let email = unique_email();
        let r = register_with(&app, &email, &password, "Pat").await;
        if accepted {
            assert_eq!(r.status(), 201, "{len} chars: {}", body(r).await);
            let login = app.login(&email, &password).await;
            assert_eq!(login.status(), 200, "{len} chars log in");
        } else {
            let b = problem(r, 422, "validation_failed").await;
            assert_eq!(field_names(&b), ["password"], "{len} chars: {b}");
            // Nothing was reserved for a refused registration.
            assert_eq!(app.register(&email).await.status(), 201);
        }
    }
    // Characters, not bytes: 10 two-byte characters are enough.
    let r = register_with(&app, &unique_email(), &"é".repeat(10), "Pat").await;
    assert_eq!(r.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_email_is_a_validation_error_naming_the_email_field() {
    let app = spawn_app().await;
    for bad in [
        "not-an-email",
        "@example.com",
        "a@",
        "a@example",
        "a b@example.com",
        "",
    ] {
        let r = register_with(&app, bad, PASSWORD, "Pat").await;
        let b = problem(r, 422, "validation_failed").await;
        assert_eq!(field_names(&b), ["email"], "{bad:?}: {b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_bad_fields_are_listed_in_one_validation_error() {
    let app = spawn_app().await;
    let r = register_with(&app, "nope", "short", "").await;
    let b = problem(r, 422, "validation_failed").await;
    let mut fields = field_names(&b);
    fields.sort();
    assert_eq!(fields, ["display_name", "email", "password"], "{b}");
    for e in b["errors"].as_array().unwrap() {
        assert!(
            !e["message"].as_str().unwrap().is_empty(),
            "every field error says why: {b}"
        );
    }
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(accounts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_stored_as_argon2id_hashes_with_the_configured_parameters() {
    let app = spawn_app().await;
    let user = app.user().await;
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM accounts WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "stored hash {hash}"
    );
    assert!(!hash.contains(PASSWORD));
}

// ------------------------------------------------------------------ login

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_returns_a_bearer_token_pair_whose_access_token_lives_15_minutes() {
    let app = spawn_app().await;
    let email = unique_email();
    let id = body(app.register(&email).await).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The email is matched case-insensitively, surrounding spaces ignored.
    let r = app
        .login(&format!(" {} ", email.to_uppercase()), PASSWORD)
        .await;
    assert_eq!(r.status(), 200);
    let b = body(r).await;
    assert_eq!(b["token_type"], "Bearer");
    assert_eq!(b["expires_in"], 900);
    let access = b["access_token"].as_str().unwrap();
    let refresh_token = b["refresh_token"].as_str().unwrap();
    assert!(!refresh_token.is_empty());
    assert_ne!(access, refresh_token);
    let claims = jwt_claims(access);
    assert_eq!(claims["iss"], "tandem");
    assert_eq!(claims["aud"], "tandem-api");
    assert_eq!(claims["sub"], id);
    let (exp, iat) = (
        claims["exp"].as_u64().unwrap(),
        claims["iat"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 900);
    assert!(iat.abs_diff(now()) <= 5);
    assert_eq!(me(&app, access).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_and_an_unknown_email_get_identical_answers() {
    let app = spawn_app().await;
    let user = app.user().await;
    let wrong_password = app.login(&user.email, "not the right password").await;
    let wrong = problem(wrong_password, 401, "invalid_credentials").await;
    let unknown_email = app.login(&unique_email(), PASSWORD).await;
    let unknown = problem(unknown_email, 401, "invalid_credentials").await;
    for key in ["type", "title", "status", "detail", "code"] {
        assert_eq!(
            wrong[key], unknown[key],
            "{key} differs: {wrong} vs {unknown}"
        );
    }
    assert_eq!(wrong, unknown);
    // A malformed email is just another unknown one.
    let malformed = problem(
        app.login("nope", PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_eq!(malformed, unknown);
    // A failed login issued nothing.
    let logins: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(logins, 1, "only the harness's successful login");
}

// ---------------------------------------------------------------- refresh

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_rotates_both_tokens_and_the_new_refresh_token_works() {
    let app = spawn_app().await;
    let user = app.user().await;
    let (access1, refresh1) = pair(refresh(&app, &user.refresh).await).await;
    assert_ne!(access1, user.access);
    assert_ne!(refresh1, user.refresh);
    // The new pair belongs to the same user and session.
    let (old, new) = (jwt_claims(&user.access), jwt_claims(&access1));
    assert_eq!(new["sub"], user.id.to_string());
    assert_eq!(new["sid"], old["sid"]);
    assert_ne!(new["jti"], old["jti"]);
    let b = body(me(&app, &access1).await).await;
    assert_eq!(b["id"], user.id.to_string());
    // The new refresh token is good for one more rotation.
    let (access2, refresh2) = pair(refresh(&app, &refresh1).await).await;
    assert_ne!(access2, access1);
    assert_ne!(refresh2, refresh1);
    assert_eq!(me(&app, &access2).await.status(), 200);
    // An unknown refresh token is simply invalid.
    let r = refresh(&app, "not-a-refresh-token").await;
    problem(r, 401, "invalid_refresh_token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_spent_refresh_token_revokes_its_whole_family_but_no_other_session() {
    let app = spawn_app().await;
    let user = app.user().await;
    // A second login of the same user: another session, another family.
    let (other_access, other_refresh) = pair(app.login(&user.email, PASSWORD).await).await;

    let (_, refresh1) = pair(refresh(&app, &user.refresh).await).await;
    let (newest_access, newest_refresh) = pair(refresh(&app, &refresh1).await).await;
    assert_eq!(me(&app, &newest_access).await.status(), 200);

    // The thief (or the victim) presents the first, spent token.
    let r = refresh(&app, &user.refresh).await;
    problem(r, 401, "refresh_token_reused").await;

    // The whole family is dead: its newest refresh token ...
    let r = refresh(&app, &newest_refresh).await;
    assert_eq!(r.status(), 401, "newest refresh token of a revoked family");
    // ... and every access token minted from it, at once.
    problem(me(&app, &newest_access).await, 401, "token_revoked").await;
    problem(me(&app, &user.access).await, 401, "token_revoked").await;

    // The other session is untouched.
    assert_eq!(me(&app, &other_access).await.status(), 200);
    let (rotated_access, _) = pair(refresh(&app, &other_refresh).await).await;
    assert_eq!(me(&app, &rotated_access).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_presented_twice_at_once_is_spent_only_once() {
    let app = spawn_app().await;
    let user = app.user().await;
    let attempts = (0..8).map(|_| refresh(&app, &user.refresh));
    let answers = futures::future::join_all(attempts).await;
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "statuses {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 401),
        "statuses {statuses:?}"
    );
}

// ----------------------------------------------------------------- logout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_access_token_and_the_refresh_token_at_once() {
    let app = spawn_app().await;
    let user = app.user().await;
    let (other_access, _) = pair(app.login(&user.email, PASSWORD).await).await;
    assert_eq!(me(&app, &user.access).await.status(), 200);

    let r = logout(&app, &user.access, &user.refresh).await;
    assert_eq!(r.status(), 204);
    assert!(r.text().await.unwrap().is_empty());

    let b = problem(me(&app, &user.access).await, 401, "token_revoked").await;
    assert!(b["detail"].is_string());
    let r = refresh(&app, &user.refresh).await;
    assert_eq!(r.status(), 401, "refresh after logout: {}", body(r).await);
    // The user's other session goes on.
    assert_eq!(me(&app, &other_access).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_gateway_is_refused_by_the_others_too() {
    let first = spawn_app().await;
    let namespace = first.namespace.clone();
    let second = spawn_app_with(|o| o.gateway.namespace = namespace).await;
    let user = first.user().await;
    // The second gateway knows the token (same key, same namespace); its
    // own database does not know the user, which does not matter here.
    let before = me(&second, &user.access).await.status();
    assert_ne!(
        before, 401,
        "the second gateway took the token before logout"
    );
    assert_eq!(
        logout(&first, &user.access, &user.refresh).await.status(),
        204
    );
    // The revocation reaches the other gateway's copy of the denylist by
    // Redis pub/sub: a moment, never more than a bound.
    let mut status = me(&second, &user.access).await;
    for _ in 0..20 {
        if status.status() == 401 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        status = me(&second, &user.access).await;
    }
    problem(status, 401, "token_revoked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_with_someone_elses_refresh_token_is_refused_and_harms_nobody() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let r = logout(&app, &alice.access, &bob.refresh).await;
    assert_eq!(r.status(), 401, "body {}", body(r).await);
    // Neither session was ended.
    assert_eq!(me(&app, &alice.access).await.status(), 200);
    assert_eq!(me(&app, &bob.access).await.status(), 200);
    let (bob_access, _) = pair(refresh(&app, &bob.refresh).await).await;
    assert_eq!(me(&app, &bob_access).await.status(), 200);
    // Logging out needs an access token.
    let r = app
        .request(Method::POST, "/auth/logout")
        .json(&json!({ "refresh_token": alice.refresh }))
        .send()
        .await
        .unwrap();
    problem(r, 401, "unauthenticated").await;
}

// ----------------------------------------------------------------- events

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_logout_and_reuse_are_events_naming_the_user_and_the_request() {
    let app = spawn_app().await;
    let email = unique_email();
    let correlation = format!("corr-{}", Uuid::new_v4());
    let send = |method: Method, path: &str, request_id: &str| {
        app.request(method, path)
            .header("x-request-id", request_id)
            .header("x-correlation-id", &correlation)
    };

    let r = send(Method::POST, "/auth/register", "req-register")
        .json(&json!({"email": email, "password": PASSWORD, "display_name": "Eve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let user: Uuid = body(r).await["id"].as_str().unwrap().parse().unwrap();
    let registered = app.events_of(&user.to_string()).await;
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].0, "UserRegistered");
    assert_eq!(registered[0].1["actor_id"], user.to_string());
    assert_eq!(registered[0].1["request_id"], "req-register");
    assert_eq!(registered[0].1["correlation_id"], correlation);
    assert_eq!(registered[0].1["causation_id"], "req-register");

    // Session 1: logged in, rotated, then its spent token comes back.
    let login = |request_id: &'static str| {
        send(Method::POST, "/auth/login", request_id)
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
    };
    let (access1, refresh1) = pair(login("req-login-1").await.unwrap()).await;
    let (_, _) = pair(refresh(&app, &refresh1).await).await;
    let r = send(Method::POST, "/auth/refresh", "req-reuse")
        .json(&json!({ "refresh_token": refresh1 }))
        .send()
        .await
        .unwrap();
    problem(r, 401, "refresh_token_reused").await;
    // Session 2: logged in, then out.
    let (access2, refresh2) = pair(login("req-login-2").await.unwrap()).await;
    let r = send(Method::POST, "/auth/logout", "req-logout")
        .bearer_auth(&access2)
        .json(&json!({ "refresh_token": refresh2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    let sid1 = jwt_claims(&access1)["sid"].as_str().unwrap().to_owned();
    let sid2 = jwt_claims(&access2)["sid"].as_str().unwrap().to_owned();
    let events = session_events(&app, user).await;
    let summary: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|(kind, sid, _, meta)| {
            (
                kind.as_str(),
                sid.as_str(),
                meta["request_id"].as_str().unwrap_or("<none>"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("UserLoggedIn", sid1.as_str(), "req-login-1"),
            ("RefreshTokenReuseDetected", sid1.as_str(), "req-reuse"),
            ("UserLoggedIn", sid2.as_str(), "req-login-2"),
            ("UserLoggedOut", sid2.as_str(), "req-logout"),
        ]
    );
    for (kind, _, payload, meta) in &events {
        assert_eq!(
            payload_user(payload),
            Some(user.to_string()),
            "{kind}: {payload}"
        );
        assert_eq!(meta["actor_id"], user.to_string(), "{kind}: {meta}");
        assert_eq!(meta["correlation_id"], correlation, "{kind}: {meta}");
        assert_eq!(meta["causation_id"], meta["request_id"], "{kind}: {meta}");
    }
}

/// The `user_id` of a session event's payload, whatever its envelope.
fn payload_user(payload: &Value) -> Option<String> {
    let inner = match payload.as_object() {
        Some(o) if o.len() == 1 && !o.contains_key("user_id") => o.values().next().unwrap(),
        _ => payload,
    };
    inner["user_id"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_without_client_ids_still_carry_request_correlation_and_causation_ids() {
    let app = spawn_app().await;
    let user = app.user().await;
    let events = session_events(&app, user.id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "UserLoggedIn");
    let meta = &events[0].3;
    for key in ["request_id", "correlation_id", "causation_id"] {
        let value = meta[key].as_str().unwrap_or("");
        assert!(!value.is_empty(), "{key} missing: {meta}");
    }
    assert_eq!(meta["actor_id"], user.id.to_string());
    let registered = app.events_of(&user.id.to_string()).await;
    assert_eq!(registered[0].0, "UserRegistered");
    assert!(registered[0].1["request_id"].is_string());
    assert_ne!(
        registered[0].1["request_id"], meta["request_id"],
        "two requests, two request ids"
    );
}

// ------------------------------------------------------- access tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correctly_hand_signed_token_is_accepted() {
    let app = spawn_app().await;
    let user = app.user().await;
    let r = me(&app, &sign_ours(&good_claims(user.id))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body(r).await["id"], user.id.to_string());
    // Within the 30 s leeway, a just-expired token still passes.
    let mut claims = good_claims(user.id);
    claims["exp"] = json!(now() - 10);
    assert_eq!(me(&app, &sign_ours(&claims)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_alg_none_token_is_refused() {
    let app = spawn_app().await;
    let user = app.user().await;
    let claims = good_claims(user.id);
    let encode_part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let header = json!({"alg": "none", "typ": "JWT"});
    let token = format!("{}.{}.", encode_part(&header), encode_part(&claims));
    assert_invalid_token(&app, &token, "alg none").await;
    let header = json!({"alg": "None", "typ": "JWT"});
    let token = format!("{}.{}.", encode_part(&header), encode_part(&claims));
    assert_invalid_token(&app, &token, "alg None").await;
    // A good token with its signature stripped.
    let good = sign_ours(&claims);
    let stripped = format!("{}.", good.rsplit_once('.').unwrap().0);
    assert_invalid_token(&app, &stripped, "stripped signature").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_with_another_key_is_refused() {
    let app = spawn_app().await;
    let user = app.user().await;
    let token = sign(
        &good_claims(user.id),
        Algorithm::HS256,
        b"another-secret-another-secret-another!",
    );
    assert_invalid_token(&app, &token, "wrong key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_with_hs512_is_refused_even_with_the_right_key() {
    let app = spawn_app().await;
    let user = app.user().await;
    let token = sign(&good_claims(user.id), Algorithm::HS512, JWT_SECRET);
    assert_invalid_token(&app, &token, "HS512").await;
    let token = sign(&good_claims(user.id), Algorithm::HS384, JWT_SECRET);
    assert_invalid_token(&app, &token, "HS384").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_outside_their_validity_window_beyond_the_leeway_are_refused() {
    let app = spawn_app().await;
    let user = app.user().await;
    let mut expired = good_claims(user.id);
    expired["exp"] = json!(now() - 120);
    expired["iat"] = json!(now() - 1000);
    expired["nbf"] = json!(now() - 1000);
    assert_invalid_token(&app, &sign_ours(&expired), "expired").await;
    let mut early = good_claims(user.id);
    early["nbf"] = json!(now() + 120);
    assert_invalid_token(&app, &sign_ours(&early), "nbf in the future").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_missing_any_required_claim_is_refused() {
    let app = spawn_app().await;
    let user = app.user().await;
    for claim in ["exp", "nbf", "iat", "sub", "jti", "iss", "aud"] {
        let mut claims = good_claims(user.id);
        claims.as_object_mut().unwrap().remove(claim);
        assert_invalid_token(&app, &sign_ours(&claims), &format!("without {claim}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_issuer_or_audience_is_refused() {
    let app = spawn_app().await;
    let user = app.user().await;
    let mut claims = good_claims(user.id);
    claims["iss"] = json!("someone-else");
    assert_invalid_token(&app, &sign_ours(&claims), "wrong issuer").await;
    let mut claims = good_claims(user.id);
    claims["aud"] = json!("another-api");
    assert_invalid_token(&app, &sign_ours(&claims), "wrong audience").await;
    let mut claims = good_claims(user.id);
    claims["sub"] = json!("not-a-uuid");
    assert_invalid_token(&app, &sign_ours(&claims), "malformed subject").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_is_not_an_access_token() {
    let app = spawn_app().await;
    let user = app.user().await;
    assert_invalid_token(&app, &user.refresh, "refresh token as bearer").await;
    assert_invalid_token(&app, "not.a.jwt", "garbage").await;
    // And the refresh token still works for what it is for.
    assert_eq!(refresh(&app, &user.refresh).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_bearer_token_is_unauthenticated() {
    let app = spawn_app().await;
    let user = app.user().await;
    let r = app.request(Method::GET, "/me").send().await.unwrap();
    assert_eq!(header(&r, "www-authenticate").as_deref(), Some("Bearer"));
    problem(r, 401, "unauthenticated").await;
    let r = app
        .request(Method::GET, "/me")
        .basic_auth(&user.email, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    problem(r, 401, "unauthenticated").await;
    // The access token itself under another scheme is no bearer token.
    let r = app
        .request(Method::GET, "/me")
        .header("authorization", format!("Token {}", user.access))
        .send()
        .await
        .unwrap();
    problem(r, 401, "unauthenticated").await;
}

// -------------------------------------------------------------------- /me

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_shows_the_caller_and_patch_me_renames_them() {
    let app = spawn_app().await;
    let user = app.user().await;
    let r = app.as_user(&user, Method::GET, "/me").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let b = body(r).await;
    assert_eq!(b["id"], user.id.to_string());
    assert_eq!(b["email"], user.email);
    assert_eq!(b["display_name"], "Tester");
    assert!(b["created_at"].is_string());

    let r = app
        .as_user(&user, Method::PATCH, "/me")
        .json(&json!({"display_name": "Grace Hopper"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b = body(r).await;
    assert_eq!(b["id"], user.id.to_string());
    assert_eq!(b["display_name"], "Grace Hopper");
    let position = b["position"].as_i64().expect("position is a number");
    assert!(position > 0);

    let b = body(app.as_user(&user, Method::GET, "/me").send().await.unwrap()).await;
    assert_eq!(b["display_name"], "Grace Hopper");
    let events = app.events_of(&user.id.to_string()).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].1["actor_id"], user.id.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_display_name_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let user = app.user().await;
    for empty in ["", "   "] {
        let r = app
            .as_user(&user, Method::PATCH, "/me")
            .json(&json!({ "display_name": empty }))
            .send()
            .await
            .unwrap();
        let b = problem(r, 422, "validation_failed").await;
        assert_eq!(field_names(&b), ["display_name"], "{empty:?}: {b}");
    }
    let b = body(app.as_user(&user, Method::GET, "/me").send().await.unwrap()).await;
    assert_eq!(b["display_name"], "Tester");
    assert_eq!(app.events_of(&user.id.to_string()).await.len(), 1);
}

// ------------------------------------------------------------ rate limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_endpoints_are_limited_per_client_address() {
    let app = spawn_app_with(|o| o.gateway.rate_limits.auth_per_ip = 3).await;
    for i in 0..3 {
        let r = app.login(&unique_email(), PASSWORD).await;
        assert_eq!(header_num(&r, "ratelimit-limit"), 3);
        assert_eq!(header_num(&r, "ratelimit-remaining"), 2 - i);
        problem(r, 401, "invalid_credentials").await;
    }
    let r = app.login(&unique_email(), PASSWORD).await;
    let retry_after = header_num(&r, "retry-after");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(header_num(&r, "ratelimit-limit"), 3);
    assert_eq!(header_num(&r, "ratelimit-remaining"), 0);
    assert!((1..=60).contains(&header_num(&r, "ratelimit-reset")));
    problem(r, 429, "rate_limited").await;
    // The same address is limited on every auth endpoint.
    problem(app.register(&unique_email()).await, 429, "rate_limited").await;
    problem(refresh(&app, "whatever").await, 429, "rate_limited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_limited_per_account() {
    let app = spawn_app_with(|o| o.gateway.rate_limits.login_per_account = 2).await;
    let alice = unique_email();
    let bob = unique_email();
    assert_eq!(app.register(&alice).await.status(), 201);
    assert_eq!(app.register(&bob).await.status(), 201);
    assert_eq!(app.login(&alice, PASSWORD).await.status(), 200);
    assert_eq!(app.login(&alice, "a wrong password").await.status(), 401);
    // The third attempt on alice, even spelled differently, is refused
    // before the password is looked at.
    for spelling in [alice.clone(), format!("  {}", alice.to_uppercase())] {
        let r = app.login(&spelling, PASSWORD).await;
        assert_eq!(header_num(&r, "ratelimit-limit"), 2, "{spelling:?}");
        assert!(header(&r, "retry-after").is_some());
        problem(r, 429, "rate_limited").await;
    }
    assert_eq!(app.login(&bob, PASSWORD).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_endpoints_are_limited_per_user() {
    let app = spawn_app_with(|o| o.gateway.rate_limits.api_per_user = 3).await;
    let alice = app.user().await;
    let bob = app.user().await;
    for remaining in [2, 1, 0] {
        let r = me(&app, &alice.access).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header_num(&r, "ratelimit-limit"), 3);
        assert_eq!(header_num(&r, "ratelimit-remaining"), remaining);
    }
    let r = me(&app, &alice.access).await;
    assert!(header_num(&r, "retry-after") >= 1);
    problem(r, 429, "rate_limited").await;
    // Another token of alice's counts against alice too.
    let (access, _) = pair(app.login(&alice.email, PASSWORD).await).await;
    problem(me(&app, &access).await, 429, "rate_limited").await;
    // Bob, from the same address, is unaffected.
    let r = me(&app, &bob.access).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header_num(&r, "ratelimit-remaining"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_answers_carry_rate_limit_headers_with_a_decreasing_remaining() {
    let app = spawn_app_with(|o| {
        o.gateway.rate_limits.auth_per_ip = 50;
        o.gateway.rate_limits.api_per_user = 40;
    })
    .await;
    let email = unique_email();
    let r = app.register(&email).await;
    assert_eq!(r.status(), 201);
    assert_eq!(header_num(&r, "ratelimit-limit"), 50);
    assert_eq!(header_num(&r, "ratelimit-remaining"), 49);
    let r = app.login(&email, PASSWORD).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header_num(&r, "ratelimit-remaining"), 48);
    let (access, _) = pair(r).await;
    let mut last = None;
    for _ in 0..3 {
        let r = me(&app, &access).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header_num(&r, "ratelimit-limit"), 40);
        let reset = header_num(&r, "ratelimit-reset");
        assert!((1..=60).contains(&reset), "reset {reset}");
        assert!(header(&r, "retry-after").is_none());
        let remaining = header_num(&r, "ratelimit-remaining");
        if let Some(last) = last {
            assert_eq!(remaining, last - 1);
        } else {
            assert_eq!(remaining, 39);
        }
        last = Some(remaining);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_shared_between_gateway_instances() {
    let first = spawn_app_with(|o| o.gateway.rate_limits.auth_per_ip = 3).await;
    let namespace = first.namespace.clone();
    let second = spawn_app_with(|o| {
        o.gateway.namespace = namespace;
        o.gateway.rate_limits.auth_per_ip = 3;
    })
    .await;
    assert_ne!(first.addr, second.addr);
    let mut remaining = Vec::new();
    for app in [&first, &first, &second] {
        let r = app.login(&unique_email(), PASSWORD).await;
        remaining.push(header_num(&r, "ratelimit-remaining"));
        problem(r, 401, "invalid_credentials").await;
    }
    assert_eq!(remaining, [2, 1, 0]);
    let r = second.login(&unique_email(), PASSWORD).await;
    problem(r, 429, "rate_limited").await;
    problem(
        first.login(&unique_email(), PASSWORD).await,
        429,
        "rate_limited",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_x_forwarded_for_does_not_escape_the_per_address_limit() {
    let app = spawn_app_with(|o| o.gateway.rate_limits.auth_per_ip = 2).await;
    for i in 0..2 {
        let r = app
            .request(Method::POST, "/auth/login")
            .header("x-forwarded-for", format!("10.0.0.{i}"))
            .json(&json!({"email": unique_email(), "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        problem(r, 401, "invalid_credentials").await;
    }
    let r = app
        .request(Method::POST, "/auth/login")
        .header("x-forwarded-for", "10.0.0.99")
        .json(&json!({"email": unique_email(), "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    problem(r, 429, "rate_limited").await;
}

// ------------------------------------------------------ idempotency, races

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_refresh_ignore_idempotency_keys_so_tokens_are_never_stored() {
    let app = spawn_app().await;
    let email = unique_email();
    assert_eq!(app.register(&email).await.status(), 201);
    let login = || {
        app.request(Method::POST, "/auth/login")
            .header("idempotency-key", "login-key")
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
    };
    let first = login().await.unwrap();
    let second = login().await.unwrap();
    assert!(header(&second, "idempotent-replayed").is_none());
    let (first_access, first_refresh) = pair(first).await;
    let (second_access, second_refresh) = pair(second).await;
    assert_ne!(first_access, second_access);
    assert_ne!(first_refresh, second_refresh);

    let rotate = || {
        app.request(Method::POST, "/auth/refresh")
            .header("idempotency-key", "refresh-key")
            .json(&json!({ "refresh_token": first_refresh }))
            .send()
    };
    assert_eq!(rotate().await.unwrap().status(), 200);
    // A retry is not a replay of the first answer: the token is spent.
    let again = rotate().await.unwrap();
    assert!(header(&again, "idempotent-replayed").is_none());
    problem(again, 401, "refresh_token_reused").await;

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "no token-bearing answer is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_retried_with_its_idempotency_key_is_replayed_not_repeated() {
    let app = spawn_app().await;
    let email = unique_email();
    let register = |email: String| {
        app.request(Method::POST, "/auth/register")
            .header("idempotency-key", "register-key")
            .json(&json!({"email": email, "password": PASSWORD, "display_name": "Ida"}))
            .send()
    };
    let first = register(email.clone()).await.unwrap();
    assert_eq!(first.status(), 201);
    let first = body(first).await;
    let retry = register(email.clone()).await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(
        header(&retry, "idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(body(retry).await["id"], first["id"]);
    let other = register(unique_email()).await.unwrap();
    problem(other, 422, "idempotency_key_reused").await;
    assert_eq!(app.events_of(first["id"].as_str().unwrap()).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_registrations_of_one_email_exactly_one_succeeds() {
    let app = spawn_app().await;
    let local = format!("race{}", Uuid::new_v4().simple());
    let attempts = (0..8).map(|i| {
        let email = if i % 2 == 0 {
            format!("{local}@example.com")
        } else {
            format!("{}@EXAMPLE.COM", local.to_uppercase())
        };
        let app = &app;
        async move { app.register(&email).await.status().as_u16() }
    });
    let statuses = futures::future::join_all(attempts).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "statuses {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "statuses {statuses:?}"
    );
    let registered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'User' AND event_type = 'UserRegistered'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(registered, 1);
}

// ---------------------------------------------------- configured lifetimes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_stops_working_once_its_configured_lifetime_is_over() {
    let app = spawn_app_with(|o| {
        o.gateway.jwt.access_ttl = Duration::from_secs(1);
        o.gateway.jwt.leeway = Duration::ZERO;
    })
    .await;
    let email = unique_email();
    assert_eq!(app.register(&email).await.status(), 201);
    let r = app.login(&email, PASSWORD).await;
    let b = body(r).await;
    assert_eq!(b["expires_in"], 1);
    let access = b["access_token"].as_str().unwrap();
    let claims = jwt_claims(access);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        1
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_invalid_token(&app, access, "expired after its 1 s lifetime").await;
    // The refresh token outlives it and mints a fresh one.
    let refresh_token = b["refresh_token"].as_str().unwrap();
    let (fresh, _) = pair(refresh(&app, refresh_token).await).await;
    assert_eq!(me(&app, &fresh).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leeway_is_capped_at_30_seconds_whatever_is_configured() {
    let app = spawn_app_with(|o| o.gateway.jwt.leeway = Duration::from_secs(300)).await;
    let user = app.user().await;
    let mut claims = good_claims(user.id);
    claims["exp"] = json!(now() - 10);
    assert_eq!(
        me(&app, &sign_ours(&claims)).await.status(),
        200,
        "inside 30 s"
    );
    let mut claims = good_claims(user.id);
    claims["exp"] = json!(now() - 90);
    assert_invalid_token(&app, &sign_ours(&claims), "90 s expired, 300 s configured").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_name_the_configured_issuer_and_audience_and_only_those_are_accepted() {
    let app = spawn_app_with(|o| {
        o.gateway.jwt.issuer = "tandem-staging".to_owned();
        o.gateway.jwt.audience = "tandem-staging-api".to_owned();
    })
    .await;
    let user = app.user().await;
    let claims = jwt_claims(&user.access);
    assert_eq!(claims["iss"], "tandem-staging");
    assert_eq!(claims["aud"], "tandem-staging-api");
    assert_eq!(me(&app, &user.access).await.status(), 200);
    // A token for the default deployment is foreign here.
    assert_invalid_token(&app, &sign_ours(&good_claims(user.id)), "default iss/aud").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cannot_be_refreshed_past_its_lifetime() {
    let app = spawn_app_with(|o| o.write.session_ttl = Duration::from_secs(2)).await;
    let user = app.user().await;
    let (_, next) = pair(refresh(&app, &user.refresh).await).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    problem(refresh(&app, &next).await, 401, "invalid_refresh_token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_logout_answer_with_the_positions_of_their_events() {
    let app = spawn_app().await;
    let email = format!("p{}@example.com", uuid::Uuid::new_v4().simple());
    assert_eq!(app.register(&email).await.status(), 201);
    let login = app.login(&email, PASSWORD).await;
    let header: i64 = login.headers()["tandem-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let tokens = body(login).await;
    assert_eq!(tokens["position"], header);
    let logged_in: i64 = sqlx::query_scalar(
        "SELECT l.position FROM events e JOIN event_log l USING (global_id)
          WHERE e.event_type = 'UserLoggedIn'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(logged_in, header);

    let logout = app
        .request(reqwest::Method::POST, "/auth/logout")
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .json(&serde_json::json!({"refresh_token": tokens["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let header: i64 = logout.headers()["tandem-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let logged_out: i64 = sqlx::query_scalar(
        "SELECT l.position FROM events e JOIN event_log l USING (global_id)
          WHERE e.event_type = 'UserLoggedOut'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(logged_out, header);
}
