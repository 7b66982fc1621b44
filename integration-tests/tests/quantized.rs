//! The int8 form of minilm-l6 (version 2, as `make model` builds it) served next to fp32
//! (version 1) as a canary: each Rank call embeds its query and candidates with one version,
//! the embedding cache never hands one version's vectors to the other, and the collector's join
//! with the example ranking rule promotes the int8 canary when its online NDCG@10 holds.

use integration_tests::*;
use proto::ecommerce::gateway::v1 as pb;
use proto::ecommerce::gateway::v1::gateway_admin_client::GatewayAdminClient;

const QUERY: &str = "waterproof jacket for hiking in the rain";
const TITLES: [&str; 8] = [
    "Lightweight rain shell with sealed seams",
    "Insulated winter parka, hooded",
    "Trail running shoes with grippy soles",
    "Packable waterproof hiking jacket",
    "Cotton hoodie, relaxed fit",
    "Umbrella, windproof, compact",
    "Hiking backpack 30 litres with rain cover",
    "Leather office shoes",
];

/// Scores of `TITLES` against `QUERY` by version `version`, from one direct inference call
/// holding the query and the titles in the order Rank sends them.
async fn direct_scores(addr: std::net::SocketAddr, version: i64) -> Vec<f32> {
    let mut texts = vec![QUERY];
    texts.extend(TITLES);
    let mut request = text_request("minilm-l6", &texts);
    request.model_version = version.to_string();
    let response = oip_client(addr)
        .await
        .model_infer(with_key(request, "client-key", None))
        .await
        .unwrap()
        .into_inner();
    let vectors = f32s(&response.raw_output_contents[0]);
    let dim = vectors.len() / texts.len();
    let query = &vectors[..dim];
    vectors[dim..]
        .chunks(dim)
        .map(|v| v.iter().zip(query).map(|(a, b)| a * b).sum())
        .collect()
}

/// Rank of `TITLES` (ids `item-<index>`) against `QUERY`, every candidate returned.
fn rank_request() -> pb::RankRequest {
    pb::RankRequest {
        query: QUERY.into(),
        candidates: TITLES
            .iter()
            .enumerate()
            .map(|(i, title)| pb::Candidate {
                id: format!("item-{i}"),
                text: (*title).into(),
            })
            .collect(),
        top_k: 0,
    }
}

/// An admin's SetCanary of minilm-l6 with these `(version, weight)` pairs.
fn split(weights: &[(i64, u32)]) -> tonic::Request<pb::SetCanaryRequest> {
    with_key(canary_split("minilm-l6", weights), "admin-key", None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rank_call_uses_one_version_and_the_cache_keeps_versions_apart() {
    let repository = repository_serving("minilm-l6", &[(1, 1), (2, 2)]);
    let mut inference =
        RunningInference::start(inference_config(repository.path(), &["minilm-l6"]))
            .await
            .unwrap();
    let expected = [
        direct_scores(inference.addr, 1).await,
        direct_scores(inference.addr, 2).await,
    ];
    let apart = expected[0]
        .iter()
        .zip(&expected[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        apart > 1e-3,
        "fp32 and int8 score alike ({apart}): the test could not tell them apart"
    );

    let mut gateway = RunningGateway::start(gateway_config(&[inference.addr], &[]))
        .await
        .unwrap();
    GatewayAdminClient::new(connect(gateway.addr).await)
        .set_canary(split(&[(1, 50), (2, 50)]))
        .await
        .unwrap();

    let request = rank_request();
    let mut client = gateway_client(gateway.addr).await;
    let mut seen = [0_usize; 3];
    // Shoppers of both versions, twice each: the second round comes from the cache.
    for round in 0..2 {
        for shopper in 0..12 {
            let shopper = format!("shopper-{shopper}");
            let ranked = client
                .rank(with_key(request.clone(), "client-key", Some(&shopper)))
                .await
                .unwrap()
                .into_inner();
            let version = ranked.served_by.unwrap().version;
            seen[version as usize] += 1;
            let want = &expected[version as usize - 1];
            for got in &ranked.ranked {
                let i: usize = got.id.trim_start_matches("item-").parse().unwrap();
                assert!(
                    (got.score - want[i]).abs() < 1e-5,
                    "round {round}, {shopper} on version {version}: {} scored {}, version \
                     {version} gives {} (the other version {})",
                    got.id,
                    got.score,
                    want[i],
                    expected[2 - version as usize][i]
                );
            }
            if round == 1 {
                assert_eq!(
                    ranked.cache_hits as usize,
                    TITLES.len() + 1,
                    "{shopper}: the second round is served from the cache"
                );
            }
        }
    }
    assert!(
        seen[1] > 0 && seen[2] > 0,
        "the split sent shoppers to both versions: {seen:?}"
    );
    gateway.stop().await.unwrap();
    inference.stop().await.unwrap();
}

/// The example rule of deploy/rules/mesh.yaml that promotes a ranking canary whose online
/// NDCG@10 holds, with a short window and few samples.
const RANKING_RULES: &str = r#"
group_by: [alertname, model]
route: {group_wait: 0s}
rules:
  - name: CanaryRankingHolds
    kind: canary_quality
    model: minilm-l6
    measure: ndcg
    min_samples: 20
    window: 10m
    op: ">="
    threshold: -0.005
    labels: {severity: info}
    actions:
      - {kind: promote_canary, model: "{{ $labels.model }}", version: "{{ $labels.model_version }}"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_int8_canary_whose_online_ndcg_holds_is_promoted() {
    use proto::monitoring::metrics::v1 as mq;
    let repository = repository_serving("minilm-l6", &[(1, 1), (2, 2)]);
    let mut inference =
        RunningInference::start(inference_config(repository.path(), &["minilm-l6"]))
            .await
            .unwrap();
    let mesh = ClosedLoop::start(
        inference.addr,
        RANKING_RULES,
        &["--rate-limit", "100000", "--rate-burst", "100000"],
    )
    .await;
    let gateway = &mesh.gateway;
    let mut admin = GatewayAdminClient::new(connect(gateway.addr).await);
    admin.set_canary(split(&[(1, 70), (2, 30)])).await.unwrap();

    // Shoppers rank the titles and click what they were shown first, on either version.
    let request = rank_request();
    let mut client = gateway_client(gateway.addr).await;
    let mut promoted_after = None;
    for sent in 0..2000 {
        let shopper = format!("shopper-{sent}");
        let ranked = client
            .rank(with_key(request.clone(), "client-key", Some(&shopper)))
            .await
            .unwrap()
            .into_inner();
        client
            .feedback(with_key(
                pb::FeedbackRequest {
                    request_id: ranked.request_id,
                    item_id: ranked.ranked[0].id.clone(),
                    event: pb::FeedbackEvent::Click as i32,
                    label: 0,
                },
                "client-key",
                Some(&shopper),
            ))
            .await
            .unwrap();
        if sent % 20 == 19 {
            let weights = canary_weights(gateway.addr, "minilm-l6").await.unwrap();
            if weights.contains(&(2, 100)) && weights.iter().all(|&(v, w)| v == 2 || w == 0) {
                promoted_after = Some(sent + 1);
                break;
            }
        }
    }
    let sent = promoted_after.expect("the int8 canary was not promoted within 2000 rankings");
    eprintln!("int8 canary promoted after {sent} rankings");

    // The join measured both versions on their own rankings.
    let quality =
        mq::metrics_query_client::MetricsQueryClient::new(connect(mesh.collector.grpc).await)
            .model_quality(mq::ModelQualityRequest {
                model: "minilm-l6".into(),
                window_seconds: 600,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    let versions: Vec<(i64, u64)> = quality
        .versions
        .iter()
        .map(|v| (v.version, v.ndcg_rankings))
        .collect();
    assert!(
        versions.iter().any(|&(v, n)| v == 1 && n >= 20)
            && versions.iter().any(|&(v, n)| v == 2 && n >= 20),
        "{versions:?}"
    );

    mesh.stop().await;
    inference.stop().await.unwrap();
}
