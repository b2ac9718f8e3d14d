//! The provider client against the provider simulator, over real HTTP: every answer code the
//! provider documents, and balance and templates.

use recuerda::provider::{Client, Disposition, ProviderError, SendRequest};
use recuerda::secret::Secret;
use recuerda::simulator::{Account, Fault, SimConfig, SimHandle, SimTemplate, Simulator};
use std::time::Duration;

const LOGIN: &str = "clinica@example.com";
const TOKEN: &str = "tok-client-sim-1";

async fn simulator() -> SimHandle {
    let template = |id: u32, body: &str| SimTemplate {
        id,
        name: format!("plantilla {id}"),
        body: body.into(),
        status: Default::default(),
    };
    let config = SimConfig {
        accounts: vec![
            Account {
                login: LOGIN.into(),
                token: Secret::new(TOKEN),
                balance: 10,
                chatbot: true,
                templates: Some(vec![990]),
            },
            Account {
                login: "sin-bot@example.com".into(),
                token: Secret::new("tok-2"),
                balance: 10,
                chatbot: false,
                templates: None,
            },
        ],
        templates: vec![
            template(990, "Hola {1}, su cita es el {2}."),
            template(991, "Otra cuenta {1}."),
        ],
        webhook_url: None,
        delays: Default::default(),
        failures: Default::default(),
        patients: Default::default(),
    };
    Simulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn client(sim: &SimHandle, login: &str, token: &str) -> Client {
    Client::from_parts(
        &sim.base_url(),
        login,
        Secret::new(token),
        Duration::from_secs(1),
        Duration::from_secs(2),
    )
    .unwrap()
}

fn request(template: u32, vars: &[&str]) -> SendRequest {
    SendRequest::from_parts(
        template,
        "+57 310 233 4455",
        vars.iter().map(|v| v.to_string()).collect(),
        None,
        Some("cita-1"),
    )
    .unwrap()
}

fn code(result: Result<recuerda::provider::MessageId, ProviderError>) -> (u32, Disposition) {
    let e = result.expect_err("the provider refused it");
    (e.code().expect("a provider code").code(), e.disposition())
}

#[tokio::test]
async fn every_documented_code_from_the_simulator_maps_to_its_error_and_disposition() {
    let sim = simulator().await;
    let ok = client(&sim, LOGIN, TOKEN);
    // 1: accepted, with a messageId the simulator recorded.
    let id = ok
        .send(&request(990, &["Carlos", "$100.000 el miércoles"]))
        .await
        .unwrap();
    let sends = sim.sends();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].message_id, id.as_str());
    assert_eq!(sends[0].variables, ["Carlos", "$100.000 el miércoles"]);
    assert_eq!(ok.balance().await.unwrap(), 9, "one unit debited");
    // 2: wrong token (the configuration, so sending stops).
    let wrong = client(&sim, LOGIN, "not-the-token");
    assert_eq!(
        code(wrong.send(&request(990, &["a", "b"])).await),
        (2, Disposition::StopSending)
    );
    let e = wrong.balance().await.unwrap_err().to_string();
    assert!(
        e.contains(
            "provider refused the login (code 2): check `provider.login` and `provider.token`"
        ),
        "{e}"
    );
    assert!(!e.contains("not-the-token"));
    // 3: an account without a chatbot.
    assert_eq!(
        code(
            client(&sim, "sin-bot@example.com", "tok-2")
                .send(&request(990, &["a", "b"]))
                .await
        ),
        (3, Disposition::StopSending)
    );
    // 4: the client never posts a number that is not Colombian, so the simulator is made to say it.
    sim.push_fault(Fault::Code { code: 4 });
    assert_eq!(
        code(ok.send(&request(990, &["a", "b"])).await),
        (4, Disposition::FailMessage)
    );
    // 6: no variables for a template that has placeholders.
    assert_eq!(
        code(ok.send(&request(990, &[])).await),
        (6, Disposition::FailMessage)
    );
    // 7: a template of another account.
    assert_eq!(
        code(ok.send(&request(991, &["a"])).await),
        (7, Disposition::FailMessage)
    );
    // 8: the wrong number of variables.
    assert_eq!(
        code(ok.send(&request(990, &["solo uno"])).await),
        (8, Disposition::FailMessage)
    );
    // 5: no balance: pause until topped up.
    sim.set_balance(LOGIN, 0).unwrap();
    assert_eq!(
        code(ok.send(&request(990, &["a", "b"])).await),
        (5, Disposition::PauseForBalance)
    );
    sim.set_balance(LOGIN, 3).unwrap();
    assert!(ok.send(&request(990, &["a", "b"])).await.is_ok());
    // Templates: the account's, with their placeholder count.
    let templates = ok.templates().await.unwrap();
    assert_eq!(templates.len(), 1);
    assert_eq!((templates[0].id, templates[0].placeholders), (Some(990), 2));
    assert_eq!(sim.sends().len(), 2, "refused sends are not accepted sends");
    sim.shutdown().await;
}
