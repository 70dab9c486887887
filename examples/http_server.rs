//! The HTTP server in one process: start it on a loopback port over the default model, then
//! act as a client over real HTTP: create a base, infer twice (the second answer comes from
//! the store), fetch a receipt's inclusion proof and check it offline, and shut down
//! gracefully (final checkpoint), then verify the ledger.
//!
//! ```sh
//! cargo run --release --example http_server
//! ```

use std::sync::Arc;

use serde_json::{json, Value};
use state_pack::engine::{MistralRsEngine, MistralRsOptions};
use state_pack::ledger::{verify_file, ReceiptProof, Signer, VerifyOptions};
use state_pack::server::{parse_tokens, Auth, Server, ServerConfig};
use state_pack::{model, StatePack, Store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("server.db");
    let signer = Signer::generate()?;
    let public_key = signer.public_key();
    let path = model::DEFAULT_MODEL.ensure(&model::cache_dir(None))?;
    let engine = MistralRsEngine::load(&path, MistralRsOptions::default()).await?;
    let pack = Arc::new(StatePack::new(Arc::new(engine), Store::open(&db, signer)?));

    let token = "example-token-0123456789abcdef";
    let config = ServerConfig {
        auth: Auth::Tokens(parse_tokens(&format!("example:{token}"))?),
        ..ServerConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Server::new(pack, config).serve(listener, async {
        let _ = stopped.await;
    }));
    println!("serving {url}");

    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("{url}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let base: Value = post(
        "/states",
        json!({"base_text": "<|im_start|>system\nYou are a terse legal assistant.<|im_end|>\n"}),
    )
    .await?
    .json()
    .await?;
    println!(
        "POST /states  -> {}  prefilled {}",
        &base["state_hash"].as_str().unwrap_or("?")[..12],
        base["tokens"]["prefilled"]
    );
    let ask = json!({
        "state_hash": base["state_hash"],
        "delta_text": "<|im_start|>user\nWho may terminate for material breach?<|im_end|>\n<|im_start|>assistant\n",
        "sampling": {"max_tokens": 12},
    });
    for attempt in ["first", "again"] {
        let a: Value = post("/infer", ask.clone()).await?.json().await?;
        println!(
            "POST /infer ({attempt})  -> {:?}  prefilled {} reused {} generated {}  engine_called {}  replay_of {}  receipt {}",
            a["output"].as_str().unwrap_or("?"),
            a["tokens"]["prefilled"],
            a["tokens"]["reused"],
            a["tokens"]["generated"],
            a["engine_called"],
            a["replay_of"],
            a["receipt"]["seq"],
        );
    }

    let proof: ReceiptProof = http
        .get(format!("{url}/receipts/2/proof"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    let receipt = proof.check(&[public_key])?;
    println!(
        "GET /receipts/2/proof -> checked offline: receipt {} ({}) is in checkpoint of size {}",
        receipt.seq,
        receipt.op.as_str(),
        proof.checkpoint.checkpoint()?.size
    );
    let health: Value = http
        .get(format!("{url}/health"))
        .send()
        .await?
        .json()
        .await?;
    println!("GET /health  -> {health}");

    let _ = stop.send(());
    let done = server.await??;
    let report = verify_file(&db, &VerifyOptions::default())?;
    println!(
        "shut down: final checkpoint over {} receipts; verify {}",
        done.receipts,
        if report.ok() { "OK" } else { "FAILED" }
    );
    Ok(())
}
