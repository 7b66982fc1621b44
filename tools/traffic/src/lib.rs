//! The shop behind the traffic generator: its catalogue, shoppers' queries and messages, and the
//! hidden purchase rule (see [`catalog`]). The `finetune` tool draws its demonstration data from
//! the same rule.

pub mod catalog;
