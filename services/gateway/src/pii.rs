//! Masking of personal data (e-mail addresses, payment cards, Chinese resident identity numbers,
//! phone numbers) in text before it goes into payload logs or span attributes.
//!
//! Requests are free text typed by shoppers, and logs and traces are kept longer and read by more
//! people than the requests themselves. So whatever names a person is replaced by a tag saying what
//! it was (`[email]`, `[card]`, `[cn-id]`, `[phone]`): the log still shows what kind of request it
//! was, but not whose. Numbers that are not personal data (prices, sizes, quantities, order ids)
//! must survive, since they are what a log is read for; a long number is therefore only masked when
//! a checksum or a phone layout says what it is.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::LazyLock;

use regex::{Captures, Regex};

/// The fewest digits any masked number has (a short phone number). Text with fewer digits and no
/// `@` cannot hold anything to mask, which is most text, so it skips the regexes.
const MIN_DIGITS: usize = 7;

/// An e-mail address. ASCII only: internationalized addresses are rare in our traffic, and a loose
/// pattern would swallow the words around an `@`.
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
        .expect("e-mail pattern is valid")
});

/// A run of digit groups joined by single spaces or dashes, the way cards are written; a resident
/// id may end in X. The run is cut into cards and ids in code rather than by the pattern, because a
/// card is often followed by more digits (an expiry, a CVV) that a greedy pattern would swallow.
static NUMBER_RUN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[0-9]+(?:[ -][0-9]+)*[Xx]?").expect("number pattern is valid"));

/// Phone layouts. Alternatives are tried in order at the same start, and the leftmost start wins,
/// so `+86 138 0013 8000` is one international number rather than a mobile number after `+86`.
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        // International: `+` country code, then groups, maybe parenthesized, with optional single
        // separators: +1 (415) 555-2671, +44 20 7946 0958, +8613800138000.
        r"\+[0-9]{1,3}(?:[ .-]?(?:\([0-9]+\)|[0-9]+))+",
        // North American: (415) 555-2671, 415-555-2671, 415.555.2671. A bare ten-digit number is
        // left alone: without the layout it is as likely an order id.
        r"|\([0-9]{3}\) ?[0-9]{3}[ .-][0-9]{4}",
        r"|[0-9]{3}[.-][0-9]{3}[.-][0-9]{4}",
        // Chinese mobile: 13800138000, 138-0013-8000, 138 0013 8000.
        r"|1[3-9][0-9][ -]?[0-9]{4}[ -]?[0-9]{4}",
    ))
    .expect("phone pattern is valid")
});

/// Replaces personal data in `text` by a tag naming its kind; borrows when nothing matched.
///
/// E-mail addresses become `[email]`, Luhn-valid card numbers `[card]`, Chinese resident identity
/// numbers with a valid check character and birth date `[cn-id]`, and phone numbers `[phone]`.
pub fn mask(text: &str) -> Cow<'_, str> {
    let has_at = text.contains('@');
    let has_digits = text
        .bytes()
        .filter(u8::is_ascii_digit)
        .nth(MIN_DIGITS - 1)
        .is_some();
    let mut masked = Cow::Borrowed(text);
    // E-mail first, so that an address like 13800138000@qq.com is masked whole, not as a phone.
    if has_at {
        masked = replace_matches(masked, &EMAIL, |_, _| Some("[email]".to_owned()));
    }
    if has_digits {
        // Cards and ids before phones: a checksum is stronger evidence than a layout, and once
        // masked their digits can no longer be taken for a phone number.
        masked = replace_matches(masked, &NUMBER_RUN, mask_cards_and_ids);
        masked = replace_matches(masked, &PHONE, mask_phone);
    }
    masked
}

/// Runs `pattern` over `text` and lets `replacement` decide for each match, given the whole text
/// and the match's range (to look at its neighbours); `None` keeps the match. Keeps the borrow when
/// nothing was replaced, so that clean text is never copied.
fn replace_matches<'t>(
    text: Cow<'t, str>,
    pattern: &Regex,
    mut replacement: impl FnMut(&str, Range<usize>) -> Option<String>,
) -> Cow<'t, str> {
    let mut changed = false;
    let masked = match pattern.replace_all(&text, |caps: &Captures<'_>| {
        let found = caps.get(0).expect("group 0 is the whole match");
        match replacement(&text, found.range()) {
            Some(tag) => {
                changed = true;
                tag
            }
            None => found.as_str().to_owned(),
        }
    }) {
        Cow::Owned(masked) if changed => Some(masked),
        _ => None,
    };
    masked.map_or(text, Cow::Owned)
}

/// Masks the cards and resident ids in one run of digit groups; `None` when it holds neither.
fn mask_cards_and_ids(text: &str, run: Range<usize>) -> Option<String> {
    // A run right after `+` is an international phone number, left to the phone pass; one glued to
    // letters is part of an identifier (a SKU, a hash) and not a number of its own.
    let open_start = !text[..run.start].ends_with(|c: char| c == '+' || c.is_ascii_alphanumeric());
    let open_end = !text[run.end..].starts_with(|c: char| c.is_ascii_alphanumeric());

    let mut next = run.start;
    let groups: Vec<Range<usize>> = text[run.clone()]
        .split([' ', '-'])
        .map(|group| {
            let range = next..next + group.len();
            next = range.end + 1;
            range
        })
        .collect();

    let mut masked = String::new();
    let mut copied = run.start;
    let mut i = usize::from(!open_start);
    while i < groups.len() {
        match card_or_id_at(text, &groups[i..], open_end) {
            Some((len, tag)) => {
                masked.push_str(&text[copied..groups[i].start]);
                masked.push_str(tag);
                copied = groups[i + len - 1].end;
                i += len;
            }
            None => i += 1,
        }
    }
    if copied == run.start {
        return None;
    }
    masked.push_str(&text[copied..run.end]);
    Some(masked)
}

/// The resident id or the longest card at the start of `groups`, as (groups it spans, tag).
/// `open_end` says whether the last group may end one: it may not when glued to letters.
fn card_or_id_at(
    text: &str,
    groups: &[Range<usize>],
    open_end: bool,
) -> Option<(usize, &'static str)> {
    // An id before a card: an 18-digit id passes Luhn one time in ten, and would then be a card.
    if (groups.len() > 1 || open_end) && is_resident_id(&text[groups[0].clone()]) {
        return Some((1, "[cn-id]"));
    }
    let (mut longest, mut digits) = (None, 0);
    for (last, group) in groups.iter().enumerate() {
        digits += group.len();
        if digits > 19 {
            break; // no card is longer
        }
        let may_end = last + 1 < groups.len() || open_end;
        if may_end && is_card(&text[groups[0].start..group.end]) {
            longest = Some((last + 1, "[card]"));
        }
    }
    longest
}

/// Whether `number` (digits, maybe grouped by spaces or dashes) is a payment-card number.
fn is_card(number: &str) -> bool {
    // Cards are printed in groups of 3 to 6 (4-4-4-4, 4-6-5, 4-4-4-4-3), or not grouped at all;
    // small groups are how quantities and dates are written, not cards.
    let grouped = number.contains([' ', '-']);
    if grouped && !number.split([' ', '-']).all(|g| (3..=6).contains(&g.len())) {
        return false;
    }
    if !number
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b' ' || b == b'-')
    {
        return false;
    }
    let digits = || {
        number
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|d| u32::from(d - b'0'))
    };
    // Card numbers start with 2 to 6 (Mir; Amex, JCB, Diners; Visa; Mastercard; Discover,
    // UnionPay). This keeps millisecond timestamps (17…), which are everywhere in logs, unmasked.
    (13..=19).contains(&digits().count())
        && (b'2'..=b'6').contains(&number.as_bytes()[0])
        && passes_luhn(digits())
}

/// The Luhn checksum: from the right, every second digit is doubled (minus 9 when above 9), and
/// the sum must be a multiple of ten. It catches any single mistyped digit.
fn passes_luhn(digits: impl DoubleEndedIterator<Item = u32>) -> bool {
    let sum: u32 = digits
        .rev()
        .enumerate()
        .map(|(i, d)| match (i % 2, d * 2) {
            (0, _) => d,
            (_, doubled) if doubled > 9 => doubled - 9,
            (_, doubled) => doubled,
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether `id` is a Chinese resident identity number (GB 11643-1999): 17 digits and an ISO 7064
/// MOD 11-2 check character (a digit or X), with the birth date at positions 7–14. The date check
/// keeps the one-in-eleven random 18-digit numbers that pass the checksum from being masked.
fn is_resident_id(id: &str) -> bool {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let id = id.as_bytes();
    if id.len() != 18 || !id[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = id[..17]
        .iter()
        .zip(WEIGHTS)
        .map(|(d, weight)| u32::from(d - b'0') * weight)
        .sum();
    id[17].to_ascii_uppercase() == CHECK[(sum % 11) as usize] && is_birth_date(&id[6..14])
}

/// Whether the eight ASCII digits `yyyymmdd` are a date from 1900 to 2099. Written out rather
/// than with a date crate: it is five lines, and a calendar is all it needs.
fn is_birth_date(yyyymmdd: &[u8]) -> bool {
    let number = |digits: &[u8]| digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'));
    let (year, month, day) = (
        number(&yyyymmdd[..4]),
        number(&yyyymmdd[4..6]),
        number(&yyyymmdd[6..]),
    );
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => 0,
    };
    (1900..=2099).contains(&year) && (1..=days).contains(&day)
}

/// Masks a phone-layout match that has enough digits and is not glued to letters or digits.
fn mask_phone(text: &str, found: Range<usize>) -> Option<String> {
    let digits = text[found.clone()]
        .bytes()
        .filter(u8::is_ascii_digit)
        .count();
    let glued = text[..found.start].ends_with(|c: char| c.is_ascii_alphanumeric())
        || text[found.end..].starts_with(|c: char| c.is_ascii_alphanumeric());
    (digits >= MIN_DIGITS && !glued).then(|| "[phone]".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that `text` comes back unchanged and without a copy.
    fn assert_kept(text: &str) {
        let masked = mask(text);
        assert_eq!(masked, text);
        assert!(matches!(masked, Cow::Borrowed(_)), "{text:?} was copied");
    }

    #[test]
    fn masks_email_addresses_in_context() {
        assert_eq!(
            mask("contact me at jane.doe+shop@example.co.uk please"),
            "contact me at [email] please"
        );
        assert_eq!(
            mask("Email: JOHN_SMITH99@Mail.Example.COM."),
            "Email: [email]."
        );
        assert_eq!(
            mask("邮箱：13800138000@qq.com，谢谢"),
            "邮箱：[email]，谢谢"
        );
        assert_kept("meet @ the store, user@localhost");
    }

    #[test]
    fn masks_luhn_valid_cards_in_every_layout() {
        for card in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5500-0000-0000-0004",
            "378282246310005",
            "3782 822463 10005",
            "6011111111111117",
        ] {
            assert_eq!(
                mask(&format!("pay with {card} today")),
                "pay with [card] today"
            );
        }
        assert_eq!(mask("卡号6011111111111117"), "卡号[card]");
    }

    #[test]
    fn keeps_cards_with_one_digit_changed() {
        for number in [
            "4111111111111112",
            "4111 1111 1111 1112",
            "5500-0000-0000-0005",
            "378282246310006",
            "6011111111111118",
        ] {
            assert_kept(&format!("pay with {number} today"));
        }
    }

    #[test]
    fn masks_only_the_card_in_a_longer_run_of_digits() {
        assert_eq!(
            mask("card 4111 1111 1111 1111 12/25 cvv 123"),
            "card [card] 12/25 cvv 123"
        );
        assert_eq!(
            mask("qty 2 5500 0000 0000 0004 thanks"),
            "qty 2 [card] thanks"
        );
    }

    #[test]
    fn masks_resident_ids_with_valid_check_and_date() {
        assert_eq!(
            mask("身份证号11010519491231002X，请核对"),
            "身份证号[cn-id]，请核对"
        );
        assert_eq!(mask("id 11010519491231002x"), "id [cn-id]");
        assert_eq!(mask("id 440308199003070013 ok"), "id [cn-id] ok");
        // 29 February 2000 exists (a leap year).
        assert_eq!(mask("id 31011520000229003X"), "id [cn-id]");
    }

    #[test]
    fn keeps_resident_ids_with_wrong_check_or_date() {
        // Wrong check character.
        assert_kept("id 110105194912310021");
        assert_kept("id 440308199003070014");
        // Valid check character, but month 13 and 30 February.
        assert_kept("id 440308199013070017");
        assert_kept("id 440308199002300016");
    }

    #[test]
    fn masks_phone_numbers_in_every_layout() {
        for phone in [
            "+1 (415) 555-2671",
            "+1-415-555-2671",
            "+44 20 7946 0958",
            "+86 138 0013 8000",
            "+8613800138000",
            "(415) 555-2671",
            "415-555-2671",
            "415.555.2671",
            "13800138000",
            "138-0013-8000",
            "138 0013 8000",
        ] {
            assert_eq!(mask(&format!("call {phone} now")), "call [phone] now");
        }
        assert_eq!(mask("手机13800138000"), "手机[phone]");
    }

    #[test]
    fn an_international_number_is_a_phone_even_when_it_passes_luhn() {
        assert!(passes_luhn(
            "4930123456786".bytes().map(|d| u32::from(d - b'0'))
        ));
        assert_eq!(mask("call +4930123456786"), "call [phone]");
    }

    #[test]
    fn keeps_short_or_glued_numbers_that_look_like_phones() {
        assert_kept("+1 555 12 apples, pack of 30");
        assert_kept("sku AB13800138000");
        assert_kept("batch 13800138000123");
        assert_kept("4155552671 is an order id");
    }

    #[test]
    fn masks_every_kind_in_a_mixed_text() {
        assert_eq!(
            mask(
                "Jane (jane@example.com, +1 415-555-2671) paid 99.99 with 4111-1111-1111-1111; \
                 ID 11010519491231002X, backup 138 0013 8000"
            ),
            "Jane ([email], [phone]) paid 99.99 with [card]; ID [cn-id], backup [phone]"
        );
    }

    #[test]
    fn keeps_ordinary_shopping_text() {
        for text in [
            "4K HDR smart TV 55 inch",
            "organic green tea, 100 bags",
            "I want to buy running shoes under $100",
            "kids waterproof winter boots size 12",
            "order 123456 arrived",
            "篮球鞋 男款 透气",
            "price 99.99, was 129.99, since 2024",
            "2024-01-15 delivery between 10:00 and 12:00",
            // Sixteen digits that fail Luhn and are in no phone layout.
            "tracking number 4111111111111112",
            // A Luhn-valid millisecond timestamp: cards never start with 1.
            "ts 1718000000006",
        ] {
            assert_kept(text);
        }
    }
}
