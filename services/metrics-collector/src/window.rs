//! Time windows: fixed-size rings of time slots, one value (of `stride` numbers) per step.
//!
//! A series keeps two: one step per second for the last hour, one step per minute for the last
//! 24 hours. A slot holds the series' value as of the end of its step; steps without a point hold
//! the previous value, as a series keeps its value until it changes. The memory of a ring is
//! reserved once, zeroed (so the pages of steps not yet reached are not resident), and never
//! grows.

/// Steps of the 1 s tier: one hour, plus a minute so that a full hour's window still fits while
/// the current second fills.
pub const SECOND_STEPS: usize = 3600 + 60;

/// Steps of the 1 min tier: 24 hours, plus a few minutes of margin.
pub const MINUTE_STEPS: usize = 1440 + 5;

/// What a ring holds for a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slot<'a> {
    /// The step is before the first point: the series did not exist yet.
    Before,
    /// The value at the end of the step.
    Value(&'a [f64]),
    /// The step is older than the ring keeps.
    Evicted,
}

/// A ring of `capacity` steps of `stride` numbers each.
#[derive(Debug, Clone)]
pub struct Ring {
    values: Box<[f64]>,
    stride: usize,
    capacity: usize,
    /// First and last steps written; `None` until the first write.
    span: Option<(i64, i64)>,
}

impl Ring {
    /// An empty ring.
    pub fn new(capacity: usize, stride: usize) -> Ring {
        Ring {
            values: vec![0.0; capacity * stride].into_boxed_slice(),
            stride,
            capacity,
            span: None,
        }
    }

    /// Bytes a ring of this shape reserves.
    pub fn bytes(capacity: usize, stride: usize) -> usize {
        capacity * stride * std::mem::size_of::<f64>()
    }

    /// Numbers per step.
    pub fn stride(&self) -> usize {
        self.stride
    }

    fn index(&self, step: i64) -> usize {
        step.rem_euclid(self.capacity as i64) as usize * self.stride
    }

    fn slot(&self, step: i64) -> &[f64] {
        let i = self.index(step);
        &self.values[i..i + self.stride]
    }

    /// The first step written.
    pub fn first(&self) -> Option<i64> {
        self.span.map(|(first, _)| first)
    }

    /// The last step written and its value.
    pub fn last(&self) -> Option<(i64, &[f64])> {
        self.span.map(|(_, last)| (last, self.slot(last)))
    }

    /// The value of the last step written, to update in place (e.g. a minute's running
    /// aggregates).
    pub fn last_mut(&mut self) -> Option<(i64, &mut [f64])> {
        let (_, last) = self.span?;
        let i = self.index(last);
        Some((last, &mut self.values[i..i + self.stride]))
    }

    /// Writes `value` (`stride` numbers) at `step`. Steps skipped since the last write take the
    /// last value. A step before the last one written (a clock going back) is written to the
    /// last step: history is never rewritten.
    pub fn write(&mut self, step: i64, value: &[f64]) {
        debug_assert_eq!(value.len(), self.stride);
        let step = match self.span {
            None => {
                self.span = Some((step, step));
                step
            }
            Some((first, last)) if step > last => {
                let skipped = (step - last - 1).min(self.capacity as i64);
                let from = self.index(last);
                for s in step - skipped..step {
                    let to = self.index(s);
                    self.values.copy_within(from..from + self.stride, to);
                }
                self.span = Some((first, step));
                step
            }
            Some((_, last)) => last,
        };
        let i = self.index(step);
        self.values[i..i + self.stride].copy_from_slice(value);
    }

    /// What the ring holds for `step`: after the last write, the last value.
    pub fn get(&self, step: i64) -> Slot<'_> {
        match self.span {
            None => Slot::Before,
            Some((first, _)) if step < first => Slot::Before,
            Some((_, last)) if step > last => Slot::Value(self.slot(last)),
            Some((_, last)) if step <= last - self.capacity as i64 => Slot::Evicted,
            Some(_) => Slot::Value(self.slot(step)),
        }
    }

    /// Values of the steps `from..=to` that hold data (steps before the first write are
    /// skipped; steps after the last write repeat it). Empty if part of the range is evicted.
    pub fn steps(&self, from: i64, to: i64) -> impl Iterator<Item = &[f64]> {
        let (from, to) = match self.span {
            Some((first, last)) if from > last - self.capacity as i64 => (from.max(first), to),
            _ => (1, 0),
        };
        (from..=to).map(move |s| match self.get(s) {
            Slot::Value(v) => v,
            _ => &[][..],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_steps_hold_the_previous_value_and_old_steps_are_evicted() {
        let mut ring = Ring::new(4, 1);
        assert_eq!(ring.get(10), Slot::Before);
        ring.write(10, &[1.0]);
        ring.write(13, &[4.0]);
        assert_eq!(ring.get(9), Slot::Before);
        assert_eq!(ring.get(11), Slot::Value(&[1.0]));
        assert_eq!(ring.get(12), Slot::Value(&[1.0]));
        assert_eq!(ring.get(13), Slot::Value(&[4.0]));
        assert_eq!(ring.get(20), Slot::Value(&[4.0]));
        ring.write(15, &[6.0]);
        // Capacity 4: steps 12..=15 are kept.
        assert_eq!(ring.get(11), Slot::Evicted);
        assert_eq!(ring.get(14), Slot::Value(&[4.0]));
        let seen: Vec<f64> = ring.steps(12, 16).map(|v| v[0]).collect();
        assert_eq!(seen, [1.0, 4.0, 4.0, 6.0, 6.0]);
        assert_eq!(ring.steps(11, 15).count(), 0);
    }

    #[test]
    fn a_late_write_goes_to_the_last_step_and_a_long_gap_wraps_safely() {
        let mut ring = Ring::new(3, 2);
        ring.write(5, &[1.0, 2.0]);
        ring.write(4, &[3.0, 4.0]);
        assert_eq!(ring.get(5), Slot::Value(&[3.0, 4.0]));
        ring.write(1_000_000, &[5.0, 6.0]);
        assert_eq!(ring.get(999_999), Slot::Value(&[3.0, 4.0]));
        assert_eq!(ring.get(999_997), Slot::Evicted);
        assert_eq!(ring.last(), Some((1_000_000, &[5.0, 6.0][..])));
    }
}
