//! The shop the traffic comes from: a catalogue of product titles, shoppers' search queries, and
//! shoppers' messages with the **hidden purchase rule** that decides which of them buy.
//!
//! # The hidden purchase rule
//!
//! A message shows purchase intent (label 1) exactly when it contains a *buying cue* — one of
//! [`BUYING_CUES`]: "buy", "order", "price", "deal", "discount", "in stock", "add to cart",
//! "checkout", "ship" — **and** names a product type of the catalogue. Every other message
//! (reviews, how-tos, comparisons, care questions, small talk) has label 0. Messages are built
//! from templates of both kinds, half and half. Shoppers are people: 3% of them act against
//! their words (the label is flipped, [`NOISE`]), so a model that learned the rule scores an AUC
//! of about 0.94 on the labels, and one that did not about 0.5.

/// Product types of the catalogue.
pub const PRODUCTS: &[&str] = &[
    "wireless headphones",
    "running shoes",
    "coffee grinder",
    "yoga mat",
    "laptop sleeve",
    "desk lamp",
    "water bottle",
    "backpack",
    "phone case",
    "mechanical keyboard",
    "air fryer",
    "winter jacket",
    "sunglasses",
    "smart watch",
    "bluetooth speaker",
    "office chair",
    "electric toothbrush",
    "cast iron pan",
    "hiking boots",
    "board game",
];

/// Brands.
pub const BRANDS: &[&str] = &[
    "Acme",
    "Northwind",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Tyrell",
];

/// Attributes of a product title.
pub const ATTRIBUTES: &[&str] = &[
    "black",
    "lightweight",
    "waterproof",
    "compact",
    "premium",
    "recycled",
    "large",
    "kids",
];

/// Words whose presence, with a product type, makes a message a purchase.
pub const BUYING_CUES: &[&str] = &[
    "buy",
    "order",
    "price",
    "deal",
    "discount",
    "in stock",
    "add to cart",
    "checkout",
    "ship",
];

/// Templates of messages with purchase intent (`{p}` a product type, `{b}` a brand).
const BUYING: &[&str] = &[
    "buy {b} {p}",
    "i want to order a {p} today",
    "best price for the {b} {p}",
    "is the {p} in stock in my size",
    "add to cart: {b} {p}",
    "any deal on a {p} this week",
    "{p} discount code please",
    "how fast can you ship the {b} {p}",
    "ready for checkout with the {p}",
];

/// Templates of messages without purchase intent.
const BROWSING: &[&str] = &[
    "how do i clean my {p}",
    "{b} {p} reviews",
    "what is the difference between a {p} and a {b} one",
    "history of {b}",
    "is a {p} worth it for beginners",
    "my old {p} broke yesterday",
    "photos of a {p} in a living room",
    "how long does a {p} last",
    "hello, just looking around",
];

/// A small, seeded pseudo-random generator (SplitMix64): the same seed gives the same traffic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An index below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One of `items`.
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// One product of the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    /// Its id, e.g. `sku-00042`.
    pub id: String,
    /// Its title, e.g. "Acme waterproof hiking boots".
    pub title: String,
    /// Index of its product type in [`PRODUCTS`].
    pub kind: usize,
}

/// The catalogue: every brand × attribute × product type, numbered.
pub fn catalogue() -> Vec<Product> {
    let mut out = Vec::new();
    for (kind, product) in PRODUCTS.iter().enumerate() {
        for brand in BRANDS {
            for attribute in ATTRIBUTES.iter().take(3) {
                out.push(Product {
                    id: format!("sku-{:05}", out.len()),
                    title: format!("{brand} {attribute} {product}"),
                    kind,
                });
            }
        }
    }
    out
}

/// The hidden purchase rule: label 1 when the message has a buying cue and names a product type.
pub fn purchase_label(message: &str) -> u32 {
    let text = message.to_lowercase();
    let cue = BUYING_CUES.iter().any(|c| text.contains(c));
    let product = PRODUCTS.iter().any(|p| text.contains(p));
    u32::from(cue && product)
}

/// Share of shoppers who act against their words.
pub const NOISE: f64 = 0.03;

/// A shopper's message and what the shopper did: the hidden rule's label, flipped for a
/// [`NOISE`] share of shoppers.
pub fn message(rng: &mut Rng) -> (String, u32) {
    let templates = if rng.unit() < 0.5 { BUYING } else { BROWSING };
    let text = rng
        .pick(templates)
        .replace("{p}", rng.pick(PRODUCTS))
        .replace("{b}", rng.pick(BRANDS));
    let label = purchase_label(&text);
    let label = if rng.unit() < NOISE { 1 - label } else { label };
    (text, label)
}

/// One labelled example as a JSON line: `{"label":0,"text":"..."}`.
pub fn example_json(text: &str, label: u32) -> String {
    serde_json::json!({"text": text, "label": label}).to_string()
}

/// A search query: an attribute and a product type, and the type's index.
pub fn query(rng: &mut Rng) -> (String, usize) {
    let kind = rng.below(PRODUCTS.len());
    (format!("{} {}", rng.pick(ATTRIBUTES), PRODUCTS[kind]), kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_needs_a_cue_and_a_product() {
        assert_eq!(purchase_label("buy Acme wireless headphones"), 1);
        assert_eq!(purchase_label("Is the yoga mat IN STOCK"), 1);
        assert_eq!(purchase_label("buy something nice"), 0);
        assert_eq!(purchase_label("how do i clean my coffee grinder"), 0);
    }

    #[test]
    fn every_template_gets_the_label_of_its_kind() {
        let mut rng = Rng::new(7);
        for _ in 0..50 {
            for t in BUYING {
                let text = t
                    .replace("{p}", rng.pick(PRODUCTS))
                    .replace("{b}", rng.pick(BRANDS));
                assert_eq!(purchase_label(&text), 1, "{text}");
            }
            for t in BROWSING {
                let text = t
                    .replace("{p}", rng.pick(PRODUCTS))
                    .replace("{b}", rng.pick(BRANDS));
                assert_eq!(purchase_label(&text), 0, "{text}");
            }
        }
    }

    #[test]
    fn messages_are_balanced_and_repeatable() {
        let mut a = Rng::new(1);
        let mut b = Rng::new(1);
        let labels: Vec<u32> = (0..2000).map(|_| message(&mut a).1).collect();
        let again: Vec<u32> = (0..2000).map(|_| message(&mut b).1).collect();
        assert_eq!(labels, again);
        let share = labels.iter().sum::<u32>() as f64 / labels.len() as f64;
        assert!((0.4..0.6).contains(&share), "{share}");
        // About NOISE of them disagree with the rule.
        let mut c = Rng::new(1);
        let against = (0..2000)
            .filter(|_| {
                let (text, label) = message(&mut c);
                purchase_label(&text) != label
            })
            .count();
        assert!((30..90).contains(&against), "{against}");
    }

    #[test]
    fn examples_are_json_lines() {
        let line = example_json("say \"hi\"\n", 1);
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["text"], "say \"hi\"\n");
        assert_eq!(back["label"], 1);
    }

    #[test]
    fn the_catalogue_has_unique_ids() {
        let c = catalogue();
        assert_eq!(c.len(), PRODUCTS.len() * BRANDS.len() * 3);
        let ids: std::collections::HashSet<_> = c.iter().map(|p| &p.id).collect();
        assert_eq!(ids.len(), c.len());
    }
}
