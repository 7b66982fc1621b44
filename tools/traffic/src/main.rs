//! `traffic`: shoppers of a small shop calling the gateway, the way a recommender service does.
//! Each round is one shopper's action: a search ranked by the gateway (with impressions, clicks,
//! add-to-carts and purchases fed back), a message classified for purchase intent (with its true
//! label fed back, under the hidden rule of [`catalog`]), or product titles embedded.
//!
//! `--once` sends one call of each kind and exits non-zero if any failed (a smoke test);
//! `--bad-canary` first sends a share of a model's shoppers to version 99 through the gateway's
//! admin API: the canary of `make demo-incident`'s bad rollout.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use proto::ecommerce::gateway::v1 as pb;
use proto::ecommerce::gateway::v1::gateway_admin_client::GatewayAdminClient;
use proto::ecommerce::gateway::v1::gateway_client::GatewayClient;
use tonic::transport::Channel;
use traffic::catalog::{self, Product, Rng};

/// Sends realistic e-commerce traffic through the gateway until Ctrl-C (or --duration,
/// --rounds): Rank with feedback (impressions, clicks, add-to-cart, purchases), Classify with
/// the true purchase label, and Embed. Shoppers are sticky (x-routing-key), so canary splits
/// hold per shopper.
#[derive(Debug, Parser)]
#[command(name = "traffic", version, about, long_about)]
struct Args {
    /// The gateway (`make run`'s, over TLS: give its CA with --tls-ca or TLS_CA_FILE;
    /// `http://` for a mesh run with MESH_PLAINTEXT).
    #[arg(
        long,
        env = "TRAFFIC_GATEWAY",
        default_value = "https://127.0.0.1:50051"
    )]
    gateway: String,

    /// API key of role client.
    #[arg(
        long,
        env = "TRAFFIC_API_KEY",
        default_value = "demo-client-key",
        hide_env_values = true
    )]
    api_key: String,

    /// Shopper actions per second.
    #[arg(long, default_value_t = 4.0)]
    rate: f64,

    /// Most actions in flight at once (beyond, a round is skipped and counted).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,

    /// Number of distinct shoppers.
    #[arg(long, default_value_t = 200)]
    shoppers: u32,

    /// Seed of the pseudo-random choices: the same seed sends the same traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Stop after this long (e.g. 90s, 10m); default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,

    /// Stop after this many actions.
    #[arg(long)]
    rounds: Option<u64>,

    /// Send one call of each kind (Embed, Rank, Classify, Feedback), print what came back, and
    /// exit non-zero if any failed.
    #[arg(long, conflicts_with_all = ["duration", "rounds"])]
    once: bool,

    /// Before the traffic, give this share (percent) of minilm-l6's shoppers to version 99 (a
    /// canary; the version must be loaded on the replicas: `make demo-incident` loads it, then
    /// takes it away again, for the alert manager to catch). Needs --admin-key.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100))]
    bad_canary: Option<u32>,

    /// API key of role admin, for --bad-canary.
    #[arg(
        long,
        env = "TRAFFIC_ADMIN_KEY",
        default_value = "demo-admin-key",
        hide_env_values = true
    )]
    admin_key: String,

    /// Print this many labelled shopper messages as JSON lines (`{"text": …, "label": 0|1}`,
    /// labelled by the hidden purchase rule) and exit: training data for `finetune`.
    #[arg(long, value_name = "N", conflicts_with_all = ["once", "bad_canary"])]
    examples: Option<usize>,

    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10)]
    report_every: u64,

    /// TLS towards the gateway (an `https://` --gateway): the mesh's CA (--tls-ca), and a
    /// certificate if you want to present one.
    #[command(flatten)]
    tls: shared::tls::TlsArgs,
}

/// Calls and failures per RPC, and failures per status.
#[derive(Debug, Default)]
struct Tally {
    calls: BTreeMap<&'static str, u64>,
    failures: BTreeMap<String, u64>,
    skipped: u64,
}

impl Tally {
    fn record<T>(&mut self, rpc: &'static str, result: &Result<T, tonic::Status>) {
        *self.calls.entry(rpc).or_default() += 1;
        if let Err(status) = result {
            *self
                .failures
                .entry(format!("{rpc} {:?}", status.code()))
                .or_default() += 1;
        }
    }

    fn line(&self) -> String {
        let calls: Vec<String> = self.calls.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let failed: u64 = self.failures.values().sum();
        let mut line = format!("calls: {}; failed: {failed}", calls.join(", "));
        if failed > 0 {
            let why: Vec<String> = self
                .failures
                .iter()
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect();
            line.push_str(&format!(" ({})", why.join(", ")));
        }
        if self.skipped > 0 {
            line.push_str(&format!(
                "; {} rounds skipped (at --concurrency)",
                self.skipped
            ));
        }
        line
    }
}

/// What one shopper's round needs.
#[derive(Clone)]
struct Shop {
    client: GatewayClient<Channel>,
    api_key: Arc<str>,
    catalogue: Arc<Vec<Product>>,
    tally: Arc<Mutex<Tally>>,
}

impl Shop {
    fn request<T>(&self, message: T, shopper: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(Duration::from_secs(10));
        if let Ok(v) = format!("Bearer {}", self.api_key).parse() {
            request.metadata_mut().insert("authorization", v);
        }
        if let Ok(v) = shopper.parse() {
            request.metadata_mut().insert("x-routing-key", v);
        }
        request
    }

    fn record<T>(&self, rpc: &'static str, result: &Result<T, tonic::Status>) {
        self.tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(rpc, result);
    }

    async fn feedback(
        &self,
        shopper: &str,
        request_id: &str,
        item: &str,
        event: pb::FeedbackEvent,
        label: u32,
    ) -> Result<(), tonic::Status> {
        let message = pb::FeedbackRequest {
            request_id: request_id.to_owned(),
            item_id: item.to_owned(),
            event: event as i32,
            label,
        };
        let result = self
            .client
            .clone()
            .feedback(self.request(message, shopper))
            .await
            .map(|_| ());
        self.record("Feedback", &result);
        result
    }

    /// A search: 20 candidates (a third of the query's type), top 5 shown; the shopper clicks
    /// items of the type searched for, now and then puts one in the cart and buys it.
    async fn search(&self, rng: &mut Rng, shopper: &str) -> Result<(), tonic::Status> {
        let (query, kind) = catalog::query(rng);
        let matching: Vec<&Product> = self.catalogue.iter().filter(|p| p.kind == kind).collect();
        let mut picked: Vec<&Product> = (0..7)
            .map(|_| matching[rng.below(matching.len())])
            .collect();
        picked.extend((0..13).map(|_| &self.catalogue[rng.below(self.catalogue.len())]));
        let mut candidates: Vec<pb::Candidate> = picked
            .into_iter()
            .map(|p| pb::Candidate {
                id: p.id.clone(),
                text: p.title.clone(),
            })
            .collect();
        candidates.dedup_by(|a, b| a.id == b.id);
        let message = pb::RankRequest {
            query,
            candidates,
            top_k: 5,
        };
        let result = self
            .client
            .clone()
            .rank(self.request(message, shopper))
            .await
            .map(tonic::Response::into_inner);
        self.record("Rank", &result);
        let ranked = result?;
        for item in &ranked.ranked {
            use pb::FeedbackEvent::{AddToCart, Click, Impression, Purchase};
            let id = &item.id;
            self.feedback(shopper, &ranked.request_id, id, Impression, 0)
                .await?;
            let relevant = self
                .catalogue
                .iter()
                .find(|p| &p.id == id)
                .is_some_and(|p| p.kind == kind);
            if rng.unit() < if relevant { 0.5 } else { 0.03 } {
                self.feedback(shopper, &ranked.request_id, id, Click, 0)
                    .await?;
                if rng.unit() < 0.4 {
                    self.feedback(shopper, &ranked.request_id, id, AddToCart, 0)
                        .await?;
                    if rng.unit() < 0.5 {
                        self.feedback(shopper, &ranked.request_id, id, Purchase, 0)
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A message classified for purchase intent, then its true label under the hidden rule.
    async fn message(&self, rng: &mut Rng, shopper: &str) -> Result<(), tonic::Status> {
        let (text, label) = catalog::message(rng);
        let message = pb::ClassifyRequest { texts: vec![text] };
        let result = self
            .client
            .clone()
            .classify(self.request(message, shopper))
            .await
            .map(tonic::Response::into_inner);
        self.record("Classify", &result);
        let classified = result?;
        self.feedback(
            shopper,
            &classified.request_id,
            "0",
            pb::FeedbackEvent::Label,
            label,
        )
        .await
    }

    /// Product titles embedded (e.g. for an index refresh).
    async fn embed(&self, rng: &mut Rng, shopper: &str) -> Result<(), tonic::Status> {
        let n = 1 + rng.below(3);
        let texts = (0..n)
            .map(|_| {
                self.catalogue[rng.below(self.catalogue.len())]
                    .title
                    .clone()
            })
            .collect();
        let result = self
            .client
            .clone()
            .embed(self.request(pb::EmbedRequest { texts }, shopper))
            .await
            .map(|_| ());
        self.record("Embed", &result);
        result
    }

    /// One shopper's action: a search (45%), a message (35%) or an embedding (20%).
    async fn round(&self, mut rng: Rng, shopper: String) {
        let roll = rng.unit();
        let _ = if roll < 0.45 {
            self.search(&mut rng, &shopper).await
        } else if roll < 0.8 {
            self.message(&mut rng, &shopper).await
        } else {
            self.embed(&mut rng, &shopper).await
        };
    }
}

/// Sends one call of each kind and reports each outcome.
async fn once(shop: &Shop) -> anyhow::Result<()> {
    let mut rng = Rng::new(42);
    let shopper = "smoke-test";
    shop.embed(&mut rng, shopper)
        .await
        .context("Embed failed")?;
    println!("Embed: ok");
    shop.search(&mut rng, shopper)
        .await
        .context("Rank (with its feedback) failed")?;
    println!("Rank + Feedback: ok");
    shop.message(&mut rng, shopper)
        .await
        .context("Classify (with its label feedback) failed")?;
    println!("Classify + Feedback: ok");
    println!(
        "{}",
        shop.tally.lock().unwrap_or_else(|p| p.into_inner()).line()
    );
    Ok(())
}

/// Gives `percent` of minilm-l6's traffic to version 99, which no replica serves.
async fn bad_canary(channel: Channel, admin_key: &str, percent: u32) -> anyhow::Result<()> {
    let model = "minilm-l6";
    let mut admin = GatewayAdminClient::new(channel);
    let mut get = tonic::Request::new(pb::GetCanaryRequest {
        model: model.into(),
    });
    get.metadata_mut()
        .insert("authorization", format!("Bearer {admin_key}").parse()?);
    let served = admin
        .get_canary(get)
        .await
        .context("reading minilm-l6's split (is the gateway up, and the admin key right?)")?
        .into_inner();
    let stable = served
        .weights
        .iter()
        .map(|w| w.version)
        .filter(|v| *v != 99)
        .max()
        .unwrap_or(1);
    let mut set = tonic::Request::new(pb::SetCanaryRequest {
        model: model.into(),
        weights: vec![
            pb::VersionWeight {
                version: stable,
                weight: 100 - percent,
            },
            pb::VersionWeight {
                version: 99,
                weight: percent,
            },
        ],
        expected_revision: None,
    });
    set.metadata_mut()
        .insert("authorization", format!("Bearer {admin_key}").parse()?);
    admin
        .set_canary(set)
        .await
        .context("setting the bad canary")?;
    eprintln!("[traffic] canary: {percent}% of {model}'s shoppers now go to version 99");
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.examples {
        let mut rng = Rng::new(args.seed);
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for _ in 0..n {
            let (text, label) = catalog::message(&mut rng);
            use std::io::Write as _;
            writeln!(out, "{}", catalog::example_json(&text, label))?;
        }
        return Ok(());
    }
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be a positive number of actions per second, not {}",
        args.rate
    );
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.shoppers > 0, "--shoppers must be at least 1");
    let tls = shared::tls::MeshTls::load_client(&args.tls)?;
    let channel = tls
        .endpoint(&args.gateway, "--gateway")?
        .connect_timeout(Duration::from_secs(3))
        .connect_lazy();
    let shop = Shop {
        client: GatewayClient::new(channel.clone()),
        api_key: args.api_key.as_str().into(),
        catalogue: Arc::new(catalog::catalogue()),
        tally: Arc::default(),
    };
    if let Some(percent) = args.bad_canary {
        bad_canary(channel, &args.admin_key, percent).await?;
    }
    if args.once {
        return once(&shop).await;
    }

    let started = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut report = tokio::time::interval(Duration::from_secs(args.report_every.max(1)));
    report.tick().await;
    let mut rng = Rng::new(args.seed);
    let mut rounds = 0u64;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    eprintln!(
        "[traffic] {} shoppers, {} actions/s through {}",
        args.shoppers, args.rate, args.gateway
    );
    loop {
        if args.rounds.is_some_and(|n| rounds >= n)
            || args.duration.is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        tokio::select! {
            _ = ticker.tick() => {
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    shop.tally.lock().unwrap_or_else(|p| p.into_inner()).skipped += 1;
                    continue;
                };
                rounds += 1;
                let shopper = format!("shopper-{:04}", rng.below(args.shoppers as usize));
                let round_rng = Rng::new(rng.next_u64());
                let shop = shop.clone();
                tokio::spawn(async move {
                    shop.round(round_rng, shopper).await;
                    drop(permit);
                });
            }
            _ = report.tick() => {
                eprintln!("[traffic] {}", shop.tally.lock().unwrap_or_else(|p| p.into_inner()).line());
            }
            _ = &mut ctrl_c => break,
        }
    }
    // Let the rounds in flight finish.
    let _ = limit.acquire_many(args.concurrency as u32).await;
    eprintln!(
        "[traffic] done after {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        shop.tally.lock().unwrap_or_else(|p| p.into_inner()).line()
    );
    Ok(())
}
