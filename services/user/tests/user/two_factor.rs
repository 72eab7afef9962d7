//! TOTP: enroll, confirm, login challenge, recovery codes, attempt limit.

use postmesh_proto::postmesh::user::v1 as pb;
use postmesh_user::Totp;
use tonic::Code;

use crate::helpers::{Account, App, PASSWORD, assert_code, signed, spawn_app};

fn now() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

/// Turns on 2FA for `account`; returns the authenticator and recovery codes.
async fn enable(app: &App, account: &Account) -> (Totp, Vec<String>) {
    let enrolled = app
        .client()
        .enroll_two_factor(signed(pb::EnrollTwoFactorRequest {}, &account.access))
        .await
        .unwrap()
        .into_inner();
    assert!(enrolled.otpauth_uri.starts_with("otpauth://totp/postmesh:"), "{}", enrolled.otpauth_uri);
    let totp = Totp::from_base32(&enrolled.secret, &account.email).expect("base32 secret");
    let status = assert_code(
        app.client()
            .confirm_two_factor(signed(
                pb::ConfirmTwoFactorRequest { totp_code: "000000".into() },
                &account.access,
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("does not match"));
    let confirmed = app
        .client()
        .confirm_two_factor(signed(
            pb::ConfirmTwoFactorRequest { totp_code: totp.code_at(now()) },
            &account.access,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.recovery_codes.len(), 10);
    (totp, confirmed.recovery_codes)
}

fn challenge(result: pb::login_response::Result) -> pb::TwoFactorChallenge {
    match result {
        pb::login_response::Result::TwoFactorChallenge(c) => c,
        other => panic!("expected a 2FA challenge, got {other:?}"),
    }
}

async fn verify(
    app: &App,
    challenge_id: &str,
    code: pb::verify_login_request::Code,
) -> Result<pb::VerifyLoginResponse, tonic::Status> {
    app.client()
        .verify_login(pb::VerifyLoginRequest { challenge_id: challenge_id.into(), code: Some(code) })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn the_full_life_register_login_2fa_refresh_logout() {
    let app = spawn_app().await;
    let account = app.register("life").await;
    let (totp, _) = enable(&app, &account).await;

    let first = challenge(app.login(&account.email, PASSWORD).await.unwrap());
    assert_eq!(first.attempts_remaining, 5);
    // The code just used to confirm cannot log in again (one use per step),
    // but the next step's code is accepted (±1 step of skew).
    let next = totp.code_at(now() + 30);
    let tokens = verify(&app, &first.challenge_id, pb::verify_login_request::Code::TotpCode(next.clone()))
        .await
        .unwrap();
    let tokens = tokens.tokens.unwrap();
    assert_eq!(tokens.workspace_id, account.workspace_id);
    assert_code(
        verify(&app, &first.challenge_id, pb::verify_login_request::Code::TotpCode(next)).await,
        Code::Unauthenticated,
    );

    let refreshed = app
        .client()
        .refresh_token(pb::RefreshTokenRequest { refresh_token: tokens.refresh_token })
        .await
        .unwrap();
    let access = refreshed.into_inner().tokens.unwrap().access_token;
    let profile =
        app.client().get_profile(signed(pb::GetProfileRequest {}, &access)).await.unwrap().into_inner();
    assert!(profile.user.unwrap().two_factor_enabled);
    app.client().logout(signed(pb::LogoutRequest { all_sessions: false }, &access)).await.unwrap();
    assert_code(
        app.client().get_profile(signed(pb::GetProfileRequest {}, &access)).await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn recovery_codes_work_once_each() {
    let app = spawn_app().await;
    let account = app.register("recovery").await;
    let (_, codes) = enable(&app, &account).await;
    let first = challenge(app.login(&account.email, PASSWORD).await.unwrap());
    let response = verify(
        &app,
        &first.challenge_id,
        pb::verify_login_request::Code::RecoveryCode(codes[0].to_uppercase()),
    )
    .await
    .unwrap();
    assert_eq!(response.recovery_codes_remaining, 9);

    let second = challenge(app.login(&account.email, PASSWORD).await.unwrap());
    assert_code(
        verify(&app, &second.challenge_id, pb::verify_login_request::Code::RecoveryCode(codes[0].clone()))
            .await,
        Code::Unauthenticated,
    );
    assert!(
        verify(&app, &second.challenge_id, pb::verify_login_request::Code::RecoveryCode(codes[1].clone()))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_challenge_allows_five_attempts() {
    let app = spawn_app().await;
    let account = app.register("attempts").await;
    let (totp, _) = enable(&app, &account).await;
    let c = challenge(app.login(&account.email, PASSWORD).await.unwrap());
    for left in (0..5).rev() {
        let status = assert_code(
            verify(&app, &c.challenge_id, pb::verify_login_request::Code::TotpCode("000000".into())).await,
            Code::Unauthenticated,
        );
        assert!(status.message().contains(&format!("{left} attempts left")), "{}", status.message());
    }
    let right = totp.code_at(now() + 30);
    let status = assert_code(
        verify(&app, &c.challenge_id, pb::verify_login_request::Code::TotpCode(right)).await,
        Code::Unauthenticated,
    );
    assert!(status.message().contains("log in again"), "{}", status.message());
    assert_code(
        verify(&app, "unknown-challenge", pb::verify_login_request::Code::TotpCode("123456".into())).await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn turning_2fa_off_needs_password_and_code() {
    let app = spawn_app().await;
    let account = app.register("off").await;
    let (_, codes) = enable(&app, &account).await;
    let disable = |password: &str, code: &str| {
        signed(
            pb::DisableTwoFactorRequest {
                password: password.into(),
                code: Some(pb::disable_two_factor_request::Code::RecoveryCode(code.into())),
            },
            &account.access,
        )
    };
    assert_code(
        app.client().disable_two_factor(disable("wrong-password-long", &codes[0])).await,
        Code::InvalidArgument,
    );
    assert_code(
        app.client().disable_two_factor(disable(PASSWORD, "aaaaa-bbbbb")).await,
        Code::InvalidArgument,
    );
    app.client().disable_two_factor(disable(PASSWORD, &codes[0])).await.unwrap();
    assert!(matches!(
        app.login(&account.email, PASSWORD).await.unwrap(),
        pb::login_response::Result::Tokens(_)
    ));
}
