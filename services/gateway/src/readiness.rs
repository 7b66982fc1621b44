//! Whether a model version is ready through the gateway: on every inference replica that a call
//! may reach. The gateway's `ModelReady` answers it, and `SetCanary` refuses a split that gives
//! traffic to a version that is not.
//!
//! Each replica is asked at once. A replica taking traffic counts whatever becomes of the call:
//! when it cannot tell (a broken connection, no answer in time), neither can the gateway. One
//! the health checks ejected counts only when it answers, so that a pod gone for good does not
//! stand in the way of a split (a rollback during an outage), while one that is back without
//! the version does.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::{Code, Status};

use crate::error::GatewayError;

/// The longest a readiness check waits for a replica taking traffic.
pub const READINESS_WAIT: Duration = Duration::from_secs(5);

/// The longest a readiness check waits for a replica the health checks ejected (it is most
/// likely gone, and counts only if it answers).
pub const EJECTED_WAIT: Duration = Duration::from_secs(1);

/// What became of asking one replica.
#[derive(Debug)]
pub enum Answer {
    /// It answered ready (`true`) or not ready.
    Ready(bool),
    /// It does not know the model or the version (NOT_FOUND, INVALID_ARGUMENT): not ready there.
    Unknown(Status),
    /// It could not tell: why.
    Failed(String),
}

impl Answer {
    /// The answer of a `ModelReady` call that ended with `result`.
    pub fn of(result: Result<bool, Status>) -> Answer {
        match result {
            Ok(ready) => Answer::Ready(ready),
            Err(status) if says_unknown(&status) => Answer::Unknown(status),
            Err(status) => Answer::Failed(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// Whether `status` is a replica saying it does not know the model or the version
/// (NOT_FOUND, INVALID_ARGUMENT), as opposed to failing to tell.
pub fn says_unknown(status: &Status) -> bool {
    matches!(status.code(), Code::NotFound | Code::InvalidArgument)
}

/// The replicas' answers about one version, folded.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Replicas that answered (ready, not ready, or unknown).
    answered: usize,
    /// Replicas that answered ready or not ready.
    ready_answers: usize,
    /// Replicas where it is not ready: they said so, or do not know it.
    not_ready: Vec<SocketAddr>,
    /// The first answer that the model or version is unknown.
    unknown: Option<Status>,
    /// Replicas taking traffic that could not tell, and why.
    failed: Vec<(SocketAddr, String)>,
    /// Ejected replicas that could not tell either (they do not count).
    gone: Vec<(SocketAddr, String)>,
}

impl Readiness {
    /// Folds each replica's `(address, whether it takes traffic, answer)`.
    pub fn fold(answers: impl IntoIterator<Item = (SocketAddr, bool, Answer)>) -> Readiness {
        let mut readiness = Readiness::default();
        for (addr, taking_traffic, answer) in answers {
            match answer {
                Answer::Ready(ready) => {
                    readiness.answered += 1;
                    readiness.ready_answers += 1;
                    if !ready {
                        readiness.not_ready.push(addr);
                    }
                }
                Answer::Unknown(status) => {
                    readiness.answered += 1;
                    readiness.not_ready.push(addr);
                    readiness.unknown.get_or_insert(status);
                }
                Answer::Failed(why) if taking_traffic => readiness.failed.push((addr, why)),
                Answer::Failed(why) => readiness.gone.push((addr, why)),
            }
        }
        readiness
    }

    /// The gateway's answer for `version` of `model` (`""`: the newest). When a replica
    /// answered ready or not ready: not ready if one that counts is not, else ready unless a
    /// replica taking traffic could not tell (UNAVAILABLE, naming it). When none did: the
    /// first replica's own NOT_FOUND / INVALID_ARGUMENT if they do not know the model or
    /// version, else UNAVAILABLE naming those that could not tell (those taking traffic, or
    /// else the ejected ones), or saying there is no replica at all.
    pub fn verdict(&self, model: &str, version: &str) -> Result<bool, Status> {
        if self.ready_answers > 0 {
            if !self.not_ready.is_empty() {
                return Ok(false);
            }
            if self.failed.is_empty() {
                return Ok(true);
            }
            return Err(cannot_tell(model, version, &self.failed));
        }
        if let Some(unknown) = &self.unknown {
            return Err(unknown.clone());
        }
        let silent = if self.failed.is_empty() {
            &self.gone
        } else {
            &self.failed
        };
        if silent.is_empty() {
            return Err(GatewayError::NoReplica.into());
        }
        Err(cannot_tell(model, version, silent))
    }

    /// Where it is not ready, in words, counting the replicas that count: `on inference
    /// replica 10.0.0.7:50052 (1 of 2)`, and those taking traffic that could not tell (`…
    /// (1 of 3; 10.0.0.8:50052 could not tell: Unavailable: …)`).
    pub fn where_not_ready(&self) -> String {
        let addrs: Vec<String> = self.not_ready.iter().map(ToString::to_string).collect();
        let noun = if addrs.len() == 1 {
            "replica"
        } else {
            "replicas"
        };
        let mut text = format!(
            "on inference {noun} {} ({} of {}",
            addrs.join(", "),
            addrs.len(),
            self.answered + self.failed.len()
        );
        for (addr, why) in &self.failed {
            text.push_str(&format!("; {addr} could not tell: {why}"));
        }
        text.push(')');
        text
    }
}

/// UNAVAILABLE: whether `version` of `model` is ready cannot be told, since the replicas in
/// `silent` did not answer.
fn cannot_tell(model: &str, version: &str, silent: &[(SocketAddr, String)]) -> Status {
    let why: Vec<String> = silent
        .iter()
        .map(|(addr, why)| format!("inference replica {addr}: {why}"))
        .collect();
    GatewayError::ReadinessUnknown {
        what: describe_version(model, version),
        why: why.join("; "),
    }
    .into()
}

/// `version 2 of model 'minilm-l6'`, or `the newest version of model 'minilm-l6'`.
fn describe_version(model: &str, version: &str) -> String {
    if version.is_empty() {
        format!("the newest version of model '{model}'")
    } else {
        format!("version {version} of model '{model}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 7], port))
    }

    fn verdict(answers: Vec<(u16, bool, Answer)>) -> (Result<bool, Status>, Readiness) {
        let readiness = Readiness::fold(answers.into_iter().map(|(p, t, a)| (at(p), t, a)));
        (readiness.verdict("minilm-l6", "2"), readiness)
    }

    fn failed() -> Answer {
        Answer::of(Err(Status::unavailable("connection refused")))
    }

    fn unknown() -> Answer {
        Answer::of(Err(Status::not_found(
            "unknown version 2 of model 'minilm-l6'",
        )))
    }

    #[test]
    fn ready_only_when_every_replica_that_counts_answers_ready() {
        let (ready, _) = verdict(vec![
            (1, true, Answer::Ready(true)),
            (2, true, Answer::Ready(true)),
        ]);
        assert!(ready.unwrap());

        let (ready, readiness) = verdict(vec![
            (1, true, Answer::Ready(true)),
            (2, true, Answer::Ready(false)),
        ]);
        assert!(!ready.unwrap());
        assert_eq!(
            readiness.where_not_ready(),
            "on inference replica 10.0.0.7:2 (1 of 2)"
        );

        // A replica that does not know the version is one where it is not ready.
        let (ready, readiness) =
            verdict(vec![(1, true, Answer::Ready(true)), (2, false, unknown())]);
        assert!(!ready.unwrap());
        assert_eq!(
            readiness.where_not_ready(),
            "on inference replica 10.0.0.7:2 (1 of 2)"
        );
    }

    #[test]
    fn an_ejected_replica_counts_only_if_it_answers() {
        let (ready, _) = verdict(vec![(1, true, Answer::Ready(true)), (2, false, failed())]);
        assert!(ready.unwrap());
        let (ready, _) = verdict(vec![
            (1, true, Answer::Ready(true)),
            (2, false, Answer::Ready(false)),
        ]);
        assert!(!ready.unwrap());
    }

    #[test]
    fn a_replica_taking_traffic_that_cannot_tell_makes_the_answer_unavailable_and_is_named() {
        let (ready, _) = verdict(vec![(1, true, Answer::Ready(true)), (2, true, failed())]);
        let status = ready.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "could not tell whether version 2 of model 'minilm-l6' is ready: inference replica \
             10.0.0.7:2: Unavailable: connection refused"
        );
        // One that answered not ready settles it, whatever the others; the silent one is
        // named beside it.
        let (ready, readiness) =
            verdict(vec![(1, true, Answer::Ready(false)), (2, true, failed())]);
        assert!(!ready.unwrap());
        assert_eq!(
            readiness.where_not_ready(),
            "on inference replica 10.0.0.7:1 (1 of 2; 10.0.0.7:2 could not tell: Unavailable: \
             connection refused)"
        );
    }

    #[test]
    fn a_model_or_version_no_replica_knows_keeps_the_replicas_own_status() {
        let (ready, _) = verdict(vec![(1, true, unknown()), (2, true, unknown())]);
        let status = ready.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "unknown version 2 of model 'minilm-l6'");
        // Unknown on one that answered, silent on the other: still not served.
        let (ready, _) = verdict(vec![(1, true, unknown()), (2, true, failed())]);
        assert_eq!(ready.unwrap_err().code(), Code::NotFound);
    }

    #[test]
    fn with_no_replica_answering_the_gateway_cannot_tell() {
        let (ready, _) = verdict(vec![(1, false, failed()), (2, false, failed())]);
        let status = ready.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("10.0.0.7:1"), "{status:?}");
        assert!(status.message().contains("10.0.0.7:2"), "{status:?}");
        let (ready, _) = verdict(vec![]);
        assert_eq!(ready.unwrap_err().code(), Code::Unavailable);
    }
}
