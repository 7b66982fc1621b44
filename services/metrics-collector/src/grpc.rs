//! gRPC handlers of `monitoring.metrics.v1`: they convert protocol types, call the [`query`],
//! [`join`] and [`exemplars`] layers, and turn their errors into statuses through
//! [`ServiceError`]. No logic lives here.
//!
//! [`query`]: crate::query
//! [`join`]: crate::join
//! [`exemplars`]: crate::exemplars

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::monitoring::metrics::v1 as pb;
use shared::error::ServiceError;
use tonic::{Request, Response, Status};

use crate::exemplars::{self, ExemplarRings};
use crate::join::{self, FeedbackJoin};
use crate::otlp::unix_now;
use crate::query::{self, Baselines, QueryError};
use crate::store::{Kind, MetricStore};

/// Longest accepted metric or label name in a query, and most matchers or group labels.
const MAX_NAME_BYTES: usize = 256;
const MAX_MATCHERS: usize = 32;
/// Longest regular expression in a matcher.
const MAX_PATTERN_BYTES: usize = 1024;

impl From<QueryError> for Status {
    fn from(err: QueryError) -> Status {
        err.to_status()
    }
}

/// A refused request: what to change, as the client reads it.
fn invalid(message: impl Into<String>) -> QueryError {
    QueryError::Invalid(message.into())
}

/// Serves `MetricsQuery` and `RecordIngest`.
#[derive(Clone)]
pub struct QueryService {
    store: Arc<MetricStore>,
    baselines: Arc<Baselines>,
    join: Arc<FeedbackJoin>,
    exemplars: Arc<ExemplarRings>,
    receiver: crate::otlp::OtlpReceiver,
    stop: shared::shutdown::Shutdown,
    senders: crate::senders::Senders,
    durable: Option<Arc<crate::durable::Durable>>,
}

impl QueryService {
    /// Uses `baselines` (restored from the data directory) and reports the disk `durable`
    /// takes.
    pub fn with_state(
        mut self,
        baselines: Arc<Baselines>,
        durable: Option<Arc<crate::durable::Durable>>,
    ) -> QueryService {
        self.baselines = baselines;
        self.durable = durable;
        self
    }

    /// Serves queries over `store`, the `join` and the `exemplars`, and watches of what
    /// `receiver` stores; open watches end when `stop` fires.
    pub fn new(
        store: Arc<MetricStore>,
        join: Arc<FeedbackJoin>,
        exemplars: Arc<ExemplarRings>,
        receiver: crate::otlp::OtlpReceiver,
        stop: shared::shutdown::Shutdown,
        senders: crate::senders::Senders,
    ) -> QueryService {
        QueryService {
            store,
            baselines: Arc::new(Baselines::new(256)),
            join,
            exemplars,
            receiver,
            stop,
            senders,
            durable: None,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn check_name(what: &str, name: &str) -> Result<(), QueryError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(invalid(format!(
            "{what} must be 1 to {MAX_NAME_BYTES} bytes, got {}",
            name.len()
        )));
    }
    Ok(())
}

fn selector(selector: Option<pb::Selector>) -> Result<query::Selector, QueryError> {
    let selector = selector.ok_or_else(|| invalid("selector is missing: name a metric"))?;
    check_name("selector.metric", &selector.metric)?;
    if selector.matchers.len() > MAX_MATCHERS {
        return Err(invalid(format!(
            "{} matchers; at most {MAX_MATCHERS}",
            selector.matchers.len()
        )));
    }
    let matchers = selector
        .matchers
        .iter()
        .map(|m| {
            check_name("matcher name", &m.name)?;
            let (regex, negate) = match pb::MatchOp::try_from(m.op) {
                Ok(pb::MatchOp::Unspecified | pb::MatchOp::Equal) => (false, false),
                Ok(pb::MatchOp::NotEqual) => (false, true),
                Ok(pb::MatchOp::Regex) => (true, false),
                Ok(pb::MatchOp::NotRegex) => (true, true),
                Err(_) => {
                    return Err(invalid(format!(
                        "matcher on '{}': unknown op {}",
                        m.name, m.op
                    )));
                }
            };
            let limit = if regex {
                MAX_PATTERN_BYTES
            } else {
                crate::sanitize::MAX_LABEL_VALUE_BYTES
            };
            if m.value.len() > limit {
                return Err(invalid(format!(
                    "matcher on '{}': the {} is {} bytes; at most {limit} (label values are cut to {} bytes when stored)",
                    m.name,
                    if regex { "pattern" } else { "value" },
                    m.value.len(),
                    crate::sanitize::MAX_LABEL_VALUE_BYTES
                )));
            }
            query::Matcher::new(&m.name, &m.value, regex, negate)
        })
        .collect::<Result<_, QueryError>>()?;
    Ok(query::Selector {
        metric: selector.metric,
        matchers,
    })
}

fn group_by(labels: Vec<String>) -> Result<Vec<String>, QueryError> {
    if labels.len() > MAX_MATCHERS {
        return Err(invalid(format!(
            "group_by has {} labels; at most {MAX_MATCHERS}",
            labels.len()
        )));
    }
    for l in &labels {
        check_name("group_by label", l)?;
    }
    Ok(labels)
}

fn query_of(request: pb::QueryRequest) -> Result<query::Query, QueryError> {
    let function = match pb::Function::try_from(request.function) {
        Ok(pb::Function::Rate) => query::Function::Rate,
        Ok(pb::Function::Increase) => query::Function::Increase,
        Ok(pb::Function::Quantile) => query::Function::Quantile(request.quantile),
        Ok(pb::Function::Avg) => query::Function::Avg,
        Ok(pb::Function::Max) => query::Function::Max,
        Ok(pb::Function::Min) => query::Function::Min,
        Ok(pb::Function::Last) => query::Function::Last,
        Ok(pb::Function::Unspecified) | Err(_) => {
            return Err(invalid(
                "function is not set: choose FUNCTION_RATE, FUNCTION_INCREASE, FUNCTION_QUANTILE, FUNCTION_AVG, FUNCTION_MAX, FUNCTION_MIN or FUNCTION_LAST",
            ));
        }
    };
    Ok(query::Query {
        selector: selector(request.selector)?,
        function,
        window: i64::from(request.window_seconds),
        group_by: group_by(request.group_by)?,
        at: (request.at_unix_seconds != 0).then_some(request.at_unix_seconds),
    })
}

fn answer(answer: query::Answer) -> pb::QueryResponse {
    pb::QueryResponse {
        samples: answer
            .samples
            .into_iter()
            .map(|s| pb::Sample {
                labels: s.labels.into_iter().collect(),
                value: s.value,
                series: s.series,
            })
            .collect(),
        at_unix_seconds: answer.at,
        resolution_seconds: answer.resolution as u32,
    }
}

/// Items of one batch, at most.
const MAX_BATCH_ITEMS: usize = 10_000;

impl QueryService {
    fn run_query(&self, request: pb::QueryRequest) -> Result<pb::QueryResponse, QueryError> {
        let query = query_of(request)?;
        Ok(answer(query::evaluate(&self.store, &query, unix_now())?))
    }

    fn run_ratio(&self, request: pb::RatioRequest) -> Result<pb::QueryResponse, QueryError> {
        let missing = |what| invalid(format!("{what} is missing"));
        let num = query_of(request.numerator.ok_or_else(|| missing("numerator"))?)?;
        let den = query_of(request.denominator.ok_or_else(|| missing("denominator"))?)?;
        Ok(answer(query::ratio(&self.store, &num, &den, unix_now())?))
    }

    fn run_drift(&self, request: pb::DriftRequest) -> Result<pb::DriftResponse, QueryError> {
        let baseline = match request.baseline {
            Some(pb::drift_request::Baseline::PastWindow(p)) => {
                if p.offset_seconds == 0 {
                    return Err(invalid(
                        "past_window.offset_seconds is 0: the baseline must end before the compared window",
                    ));
                }
                query::BaselineSource::PastWindow {
                    offset: i64::from(p.offset_seconds),
                    window: i64::from(p.window_seconds),
                }
            }
            Some(pb::drift_request::Baseline::Snapshot(name)) => {
                query::BaselineSource::Snapshot(self.baselines.get(&name)?)
            }
            None => {
                return Err(invalid("baseline is missing: give past_window or snapshot"));
            }
        };
        let (at, results) = query::drift(
            &self.store,
            &selector(request.selector)?,
            &group_by(request.group_by)?,
            i64::from(request.window_seconds),
            (request.at_unix_seconds != 0).then_some(request.at_unix_seconds),
            &baseline,
            unix_now(),
        )?;
        Ok(pb::DriftResponse {
            results: results
                .into_iter()
                .map(|r| pb::DriftResult {
                    labels: r.labels.into_iter().collect(),
                    psi: r.drift.psi,
                    ks_statistic: r.drift.ks_statistic,
                    ks_p_value: r.drift.ks_p_value,
                    window_count: r.window_count,
                    baseline_count: r.baseline_count,
                })
                .collect(),
            at_unix_seconds: at,
        })
    }

    /// Online quality per model version, from the prediction–feedback join.
    fn run_quality(
        &self,
        request: pb::ModelQualityRequest,
    ) -> Result<pb::ModelQualityResponse, QueryError> {
        let k = match request.k {
            0 => 10,
            k if k as usize > join::MAX_ITEMS => {
                return Err(invalid(format!(
                    "k = {k}; at most {} (the items kept per ranking)",
                    join::MAX_ITEMS
                )));
            }
            k => k,
        };
        let (versions, counts) = self.join.quality(
            &request.model,
            i64::from(request.window_seconds) * 1000,
            k as usize,
            now_ms(),
        );
        let nan = f64::NAN;
        Ok(pb::ModelQualityResponse {
            versions: versions
                .into_iter()
                .map(|q| pb::VersionQuality {
                    model: q.model,
                    version: q.version,
                    predictions: q.predictions,
                    with_feedback: q.with_feedback,
                    labelled: q.labelled,
                    accuracy: q.accuracy.unwrap_or(nan),
                    auc: q.auc.unwrap_or(nan),
                    calibration_error: q.calibration_error.unwrap_or(nan),
                    rankings: q.rankings,
                    ctr: q.ctr.unwrap_or(nan),
                    ndcg_at_k: q.ndcg_at_k.unwrap_or(nan),
                    ndcg_rankings: q.ndcg_rankings,
                    unmatched_predictions: q.unmatched_predictions,
                })
                .collect(),
            unmatched_feedback: counts.unmatched_feedback,
            evicted_predictions: counts.evicted_predictions,
            k,
        })
    }

    fn run_batch(&self, items: Vec<pb::BatchItem>) -> Vec<pb::BatchResult> {
        use pb::batch_item::Item;
        use pb::batch_result::Result as Answer;
        items
            .into_iter()
            .map(|item| {
                let result = match item.item {
                    Some(Item::Query(q)) => self.run_query(q).map(Answer::Samples),
                    Some(Item::Ratio(r)) => self.run_ratio(r).map(Answer::Samples),
                    Some(Item::Drift(d)) => self.run_drift(d).map(Answer::Drift),
                    Some(Item::Quality(q)) => self.run_quality(q).map(Answer::Quality),
                    None => Err(invalid("an empty batch item")),
                };
                pb::BatchResult {
                    result: Some(result.unwrap_or_else(|s| Answer::Error(s.to_string()))),
                }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl pb::metrics_query_server::MetricsQuery for QueryService {
    type WatchStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::MetricsUpdated, Status>> + Send>,
    >;

    async fn watch(
        &self,
        _request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        use tokio_stream::StreamExt as _;
        use tokio_stream::wrappers::BroadcastStream;
        use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
        let stream = BroadcastStream::new(self.receiver.subscribe()).map(|update| {
            Ok(match update {
                Ok(metrics) => pb::MetricsUpdated {
                    metrics: metrics.to_vec(),
                    missed: 0,
                },
                Err(BroadcastStreamRecvError::Lagged(n)) => pb::MetricsUpdated {
                    metrics: Vec::new(),
                    missed: n,
                },
            })
        });
        // The watch ends when the collector starts to stop, so it does not hold the drain.
        let stream = futures::StreamExt::take_until(stream, self.stop.clone().wait());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        Ok(Response::new(self.run_query(request.into_inner())?))
    }

    async fn ratio(
        &self,
        request: Request<pb::RatioRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        Ok(Response::new(self.run_ratio(request.into_inner())?))
    }

    async fn drift(
        &self,
        request: Request<pb::DriftRequest>,
    ) -> Result<Response<pb::DriftResponse>, Status> {
        Ok(Response::new(self.run_drift(request.into_inner())?))
    }

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        let items = request.into_inner().items;
        if items.len() > MAX_BATCH_ITEMS {
            return Err(invalid(format!(
                "{} items; at most {MAX_BATCH_ITEMS} per batch",
                items.len()
            ))
            .into());
        }
        // A large batch is CPU work: keep it off the threads that serve other calls.
        let service = self.clone();
        let results = tokio::task::spawn_blocking(move || service.run_batch(items))
            .await
            .map_err(|e| QueryError::Internal(format!("batch evaluation failed: {e}")))?;
        Ok(Response::new(pb::BatchResponse { results }))
    }

    async fn pin_baseline(
        &self,
        request: Request<pb::PinBaselineRequest>,
    ) -> Result<Response<pb::PinBaselineResponse>, Status> {
        self.senders.check(&request, "baseline pins")?;
        let request = request.into_inner();
        check_name("name", &request.name)?;
        let (groups, observations) = self.baselines.pin(
            &request.name,
            &self.store,
            &selector(request.selector)?,
            &group_by(request.group_by)?,
            i64::from(request.window_seconds),
            unix_now(),
        )?;
        Ok(Response::new(pb::PinBaselineResponse {
            groups: groups as u32,
            observations,
        }))
    }

    async fn list_metrics(
        &self,
        _request: Request<pb::ListMetricsRequest>,
    ) -> Result<Response<pb::ListMetricsResponse>, Status> {
        let metrics = self
            .store
            .catalog()
            .into_iter()
            .map(|m| pb::MetricInfo {
                name: m.name,
                kind: match m.kind {
                    Kind::Counter => pb::MetricKind::Counter,
                    Kind::Gauge => pb::MetricKind::Gauge,
                    Kind::Histogram => pb::MetricKind::Histogram,
                } as i32,
                unit: m.unit,
                description: m.description,
                series: m.series as u32,
                refused_points: m.refused,
            })
            .collect();
        let limits = self.store.limits();
        Ok(Response::new(pb::ListMetricsResponse {
            metrics,
            refused_points: self.store.refused(),
            max_series_per_metric: limits.max_series as u32,
            window_bytes: self.store.window_bytes(),
            window_bytes_limit: limits.max_window_bytes,
            disk_bytes: self.durable.as_ref().map_or(0, |d| d.disk_bytes()),
            data_dir: self
                .durable
                .as_ref()
                .map(|d| d.dir().display().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn labelled_examples(
        &self,
        request: Request<pb::LabelledExamplesRequest>,
    ) -> Result<Response<pb::LabelledExamplesResponse>, Status> {
        let request = request.into_inner();
        if request.model.is_empty() {
            return Err(invalid("model is empty").into());
        }
        let limit = match request.limit {
            0 => 10_000,
            n if n > 100_000 => {
                return Err(invalid(format!("limit {n}; at most 100,000")).into());
            }
            n => n as usize,
        };
        let examples = self
            .join
            .labelled_examples(&request.model, limit, now_ms())
            .into_iter()
            .map(|e| pb::LabelledExample {
                text: e.text,
                label: e.label,
                version: e.version,
                at_unix_ms: e.at_ms,
            })
            .collect();
        Ok(Response::new(pb::LabelledExamplesResponse { examples }))
    }

    async fn model_quality(
        &self,
        request: Request<pb::ModelQualityRequest>,
    ) -> Result<Response<pb::ModelQualityResponse>, Status> {
        Ok(Response::new(self.run_quality(request.into_inner())?))
    }

    async fn exemplars(
        &self,
        request: Request<pb::ExemplarsRequest>,
    ) -> Result<Response<pb::ExemplarsResponse>, Status> {
        let request = request.into_inner();
        let error = match pb::ExemplarStatus::try_from(request.status) {
            Ok(pb::ExemplarStatus::Unspecified) => None,
            Ok(pb::ExemplarStatus::Error) => Some(true),
            Ok(pb::ExemplarStatus::Slow) => Some(false),
            Err(_) => {
                return Err(invalid(format!("unknown status {}", request.status)).into());
            }
        };
        let filter = exemplars::Filter {
            service: request.service,
            model: request.model,
            version: request.version,
            error,
            since_unix_ms: if request.since_seconds == 0 {
                i64::MIN
            } else {
                now_ms() - i64::from(request.since_seconds) * 1000
            },
            limit: match request.limit {
                0 => 20,
                n => n.min(1000) as usize,
            },
        };
        let found = self.exemplars.find(&filter);
        Ok(Response::new(pb::ExemplarsResponse {
            exemplars: found
                .into_iter()
                .map(|e| pb::Exemplar {
                    trace_id: e.trace_id,
                    span_id: e.span_id,
                    service: e.service,
                    span_name: e.span_name,
                    model: e.model,
                    version: e.version,
                    error: e.error,
                    status_message: e.status_message,
                    duration_ms: e.duration_ms,
                    end_unix_ms: e.end_unix_ms,
                })
                .collect(),
        }))
    }
}

fn event(event: i32, label: u32) -> Option<join::Event> {
    Some(match pb::FeedbackEvent::try_from(event).ok()? {
        pb::FeedbackEvent::Impression => join::Event::Impression,
        pb::FeedbackEvent::Click => join::Event::Click,
        pb::FeedbackEvent::AddToCart => join::Event::AddToCart,
        pb::FeedbackEvent::Purchase => join::Event::Purchase,
        pb::FeedbackEvent::Label => join::Event::Label(label),
        pb::FeedbackEvent::Unspecified => return None,
    })
}

/// Applies one record to the join.
fn take(join: &FeedbackJoin, record: pb::Record, now: i64) -> Result<(), String> {
    match record.kind {
        Some(pb::record::Kind::Prediction(p)) => {
            let task = match pb::PredictionTask::try_from(p.task) {
                Ok(pb::PredictionTask::Classify) => join::Task::Classify,
                Ok(pb::PredictionTask::Rank) => join::Task::Rank,
                _ => return Err(format!("prediction {} has no task", p.request_id)),
            };
            join.predict(
                join::Prediction {
                    request_id: p.request_id,
                    model: p.model,
                    version: p.version,
                    task,
                    items: p.items,
                    scores: p.scores,
                    texts: p.texts,
                    at_ms: if p.at_unix_ms > 0 { p.at_unix_ms } else { now },
                },
                now,
            )
            .map_err(|e| e.to_string())
        }
        Some(pb::record::Kind::Feedback(f)) => {
            let event = event(f.event, f.label)
                .ok_or_else(|| format!("feedback for {} has no event", f.request_id))?;
            join.feedback(join::Feedback {
                request_id: f.request_id,
                item_id: f.item_id,
                event,
            })
            .map_err(|e| e.to_string())
        }
        None => Err("a record is neither a prediction nor feedback".into()),
    }
}

#[tonic::async_trait]
impl pb::record_ingest_server::RecordIngest for QueryService {
    async fn push(
        &self,
        request: Request<pb::PushRecordsRequest>,
    ) -> Result<Response<pb::PushRecordsResponse>, Status> {
        self.senders.check(&request, "record pushes")?;
        let request = request.into_inner();
        let now = now_ms();
        if request.dropped_by_sender > 0 {
            self.join.sender_dropped(request.dropped_by_sender);
        }
        let (mut accepted, mut refused) = (0, 0);
        let mut error_message = String::new();
        for record in request.records {
            match take(&self.join, record, now) {
                Ok(()) => accepted += 1,
                Err(err) => {
                    refused += 1;
                    if error_message.is_empty() {
                        error_message = err;
                    }
                }
            }
        }
        Ok(Response::new(pb::PushRecordsResponse {
            accepted,
            refused,
            error_message,
        }))
    }
}
