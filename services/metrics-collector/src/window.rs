//! Time windows of one metric family, stored by time: one row per step (a second, a minute, an
//! hour)
//! holding the value of every series of the family at the end of that step.
//!
//! Each series owns a column (`width` numbers at an offset) in every row written since it
//! appeared; rows from before it are shorter. A step's row starts as a copy of the previous row,
//! as a series keeps its value until it changes; steps without any point have no row and read as
//! the row before them. Reading one step for every series is one contiguous slice, which is what
//! keeps a query over 10,000 series at two memory reads per series. Rows no longer needed to
//! answer a step within the tier's reach are evicted, and their buffers reused for new rows.

use std::collections::VecDeque;

/// Steps of the 1 s tier: one hour, plus a minute so that a full hour's window still fits while
/// the current second fills.
pub const SECOND_STEPS: usize = 3600 + 60;

/// Steps of the 1 min tier: 24 hours, plus a few minutes of margin.
pub const MINUTE_STEPS: usize = 1440 + 5;

/// Steps of the 1 h tier: 7 days (long burn-rate windows), plus two hours of margin.
pub const HOUR_STEPS: usize = 7 * 24 + 2;

/// What a tier holds for a series at a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slot<'a> {
    /// The step is before the series' first point.
    Before,
    /// The value at the end of the step.
    Value(&'a [f64]),
    /// The step is older than the tier keeps.
    Evicted,
}

#[derive(Debug)]
struct Row {
    step: i64,
    values: Vec<f64>,
}

/// One tier's rows.
#[derive(Debug)]
pub struct Columns {
    rows: VecDeque<Row>,
    /// Steps kept.
    capacity: i64,
    /// Width of a full row: every column so far.
    width: usize,
    /// The newest step whose row was evicted, if any.
    evicted_through: Option<i64>,
}

impl Columns {
    /// No rows, no columns, keeping `capacity` steps.
    pub fn new(capacity: usize) -> Columns {
        Columns {
            rows: VecDeque::new(),
            capacity: capacity as i64,
            width: 0,
            evicted_through: None,
        }
    }

    /// Bytes that a column of `width` numbers takes when every step has a row.
    pub fn column_bytes(capacity: usize, width: usize) -> usize {
        capacity * width * std::mem::size_of::<f64>()
    }

    /// Adds a column of `width` numbers and returns its offset. Rows written so far do not hold
    /// it: reading them gives [`Slot::Before`].
    pub fn add_column(&mut self, width: usize) -> usize {
        let offset = self.width;
        self.width += width;
        offset
    }

    /// The numbers of a column at `step`, to write. The step's row is created from the previous
    /// row if it does not exist yet; a step before the last row's (a clock going back) writes to
    /// the last row: history is never rewritten.
    pub fn slot_mut(&mut self, step: i64, offset: usize, width: usize) -> &mut [f64] {
        let new_row = self.rows.back().is_none_or(|last| step > last.step);
        if new_row {
            let mut values = Vec::new();
            // The first step still within reach reads the row in force then: rows before that
            // one are no longer needed.
            let reach = step - self.capacity + 1;
            while self.rows.len() >= 2 && self.rows[1].step <= reach {
                let old = self.rows.pop_front().expect("front exists");
                self.evicted_through = Some(old.step);
                values = old.values;
            }
            values.clear();
            if let Some(last) = self.rows.back() {
                values.extend_from_slice(&last.values);
            }
            self.rows.push_back(Row { step, values });
        }
        let width_now = self.width;
        let row = self.rows.back_mut().expect("a row exists");
        if row.values.len() < width_now {
            row.values.resize(width_now, 0.0);
        }
        &mut row.values[offset..offset + width]
    }

    /// Numbers in a full row: every column so far.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The last step written, if any.
    pub fn last_step(&self) -> Option<i64> {
        self.rows.back().map(|r| r.step)
    }

    /// The row in force at `step` (the last one at or before it).
    fn row_at(&self, step: i64) -> Result<&Row, Slot<'_>> {
        let i = self.rows.partition_point(|r| r.step <= step);
        if i == 0 {
            return Err(match self.evicted_through {
                Some(_) => Slot::Evicted,
                None => Slot::Before,
            });
        }
        Ok(&self.rows[i - 1])
    }

    /// The whole row in force at `step` ([`Slot::Value`] holds every column), to read many
    /// series at one step.
    pub fn row(&self, step: i64) -> Slot<'_> {
        match self.row_at(step) {
            Err(slot) => slot,
            Ok(row) => Slot::Value(&row.values),
        }
    }

    /// What the column at `offset` holds at `step`.
    pub fn get(&self, step: i64, offset: usize, width: usize) -> Slot<'_> {
        match self.row_at(step) {
            Err(slot) => slot,
            Ok(row) if row.values.len() < offset + width => Slot::Before,
            Ok(row) => Slot::Value(&row.values[offset..offset + width]),
        }
    }

    /// Rows in force over the steps `from..=to`, each with the number of steps it covers there.
    /// `None` when part of the range is evicted.
    pub fn rows_over(&self, from: i64, to: i64) -> Option<Vec<(&[f64], i64)>> {
        if from > to {
            return Some(Vec::new());
        }
        let start = self.rows.partition_point(|r| r.step <= from);
        if start == 0 && self.evicted_through.is_some() {
            return None;
        }
        let first = start.saturating_sub(1);
        let mut out = Vec::new();
        for i in first..self.rows.len() {
            let row = &self.rows[i];
            if row.step > to {
                break;
            }
            let begin = row.step.max(from);
            let end = self
                .rows
                .get(i + 1)
                .map_or(to, |next| (next.step - 1).min(to));
            if end >= begin {
                out.push((row.values.as_slice(), end - begin + 1));
            }
        }
        Some(out)
    }
}

impl Columns {
    /// Keeps only the columns `keep` (offset and width, in offset order), packed from offset 0
    /// in that order, in every row; returns their new offsets. A row that did not hold a column
    /// yet (it predates the series) ends before it, as before.
    pub fn compact(&mut self, keep: &[(usize, usize)]) -> Vec<usize> {
        let mut offsets = Vec::with_capacity(keep.len());
        let mut width = 0;
        for (_, w) in keep {
            offsets.push(width);
            width += w;
        }
        let mut packed = Vec::with_capacity(width);
        for row in &mut self.rows {
            packed.clear();
            for (offset, w) in keep {
                if row.values.len() < offset + w {
                    break;
                }
                packed.extend_from_slice(&row.values[*offset..offset + w]);
            }
            row.values.clear();
            row.values.extend_from_slice(&packed);
            row.values.shrink_to_fit();
        }
        self.width = width;
        offsets
    }

    /// Writes the rows, for a snapshot; `spill` is called after each row (to write out what
    /// the writer holds, so that a snapshot never holds a whole tier in memory).
    pub fn encode(
        &self,
        w: &mut crate::durable::codec::Writer,
        spill: &mut dyn FnMut(&mut crate::durable::codec::Writer),
    ) {
        w.len(self.width);
        match self.evicted_through {
            Some(step) => {
                w.u8(1);
                w.i64(step);
            }
            None => w.u8(0),
        }
        w.len(self.rows.len());
        for row in &self.rows {
            w.i64(row.step);
            w.f64s(&row.values);
            spill(w);
        }
    }

    /// Reads the head of what [`Columns::encode`] wrote, keeping `capacity` steps; returns the
    /// columns without rows and the number of rows that follow (read each with
    /// [`Columns::decode_row`]).
    pub fn decode_head(
        r: &mut crate::durable::codec::Reader<'_>,
        capacity: usize,
    ) -> Result<(Columns, usize), crate::durable::codec::Malformed> {
        let width = r.varint()? as usize;
        let evicted_through = match r.u8()? {
            0 => None,
            _ => Some(r.i64()?),
        };
        let n = r.varint()? as usize;
        if n > capacity.saturating_mul(2) + 2 {
            return Err(crate::durable::codec::Malformed {
                at: 0,
                what: "no more rows than a tier keeps",
            });
        }
        let columns = Columns {
            rows: VecDeque::with_capacity(n),
            capacity: capacity as i64,
            width,
            evicted_through,
        };
        Ok((columns, n))
    }

    /// Reads one row after [`Columns::decode_head`].
    pub fn decode_row(
        &mut self,
        r: &mut crate::durable::codec::Reader<'_>,
    ) -> Result<(), crate::durable::codec::Malformed> {
        let step = r.i64()?;
        let values = r.f64s()?;
        let ordered = self.rows.back().is_none_or(|last| last.step < step);
        if values.len() > self.width || !ordered {
            return Err(crate::durable::codec::Malformed {
                at: 0,
                what: "rows in step order, no wider than their columns",
            });
        }
        self.rows.push_back(Row { step, values });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(columns: &mut Columns, step: i64, offset: usize, value: f64) {
        columns.slot_mut(step, offset, 1)[0] = value;
    }

    #[test]
    fn steps_hold_the_previous_value_and_old_steps_are_evicted() {
        let mut columns = Columns::new(4);
        let a = columns.add_column(1);
        assert_eq!(columns.get(10, a, 1), Slot::Before);
        write(&mut columns, 10, a, 1.0);
        write(&mut columns, 13, a, 4.0);
        assert_eq!(columns.get(9, a, 1), Slot::Before);
        assert_eq!(columns.get(11, a, 1), Slot::Value(&[1.0]));
        assert_eq!(columns.get(13, a, 1), Slot::Value(&[4.0]));
        assert_eq!(columns.get(20, a, 1), Slot::Value(&[4.0]));
        // A second series appears at step 13: earlier rows do not hold it.
        let b = columns.add_column(2);
        columns.slot_mut(13, b, 2).copy_from_slice(&[7.0, 8.0]);
        assert_eq!(columns.get(12, b, 2), Slot::Before);
        assert_eq!(columns.get(13, b, 2), Slot::Value(&[7.0, 8.0]));
        write(&mut columns, 15, a, 6.0);
        assert_eq!(columns.get(15, b, 2), Slot::Value(&[7.0, 8.0]));
        // Capacity 4: at step 15 the reach starts at 12, which step 10's row still answers.
        assert_eq!(columns.get(12, a, 1), Slot::Value(&[1.0]));
        write(&mut columns, 17, a, 8.0);
        // At 17 the reach starts at 14, answered by step 13's row: step 10's row is evicted.
        assert_eq!(columns.get(11, a, 1), Slot::Evicted);
        assert_eq!(columns.get(14, a, 1), Slot::Value(&[4.0]));
        let covered: Vec<(f64, i64)> = columns
            .rows_over(13, 16)
            .unwrap()
            .iter()
            .map(|(row, n)| (row[a], *n))
            .collect();
        assert_eq!(covered, [(4.0, 2), (6.0, 2)]);
        let covered: Vec<(f64, i64)> = columns
            .rows_over(16, 20)
            .unwrap()
            .iter()
            .map(|(row, n)| (row[a], *n))
            .collect();
        assert_eq!(covered, [(6.0, 1), (8.0, 4)]);
        assert!(columns.rows_over(11, 15).is_none());
    }

    #[test]
    fn a_late_write_goes_to_the_last_step_and_a_long_gap_keeps_its_value() {
        let mut columns = Columns::new(3);
        let a = columns.add_column(1);
        write(&mut columns, 5, a, 1.0);
        write(&mut columns, 4, a, 3.0);
        assert_eq!(columns.get(5, a, 1), Slot::Value(&[3.0]));
        write(&mut columns, 1_000_000, a, 5.0);
        // The old row still answers the steps within reach that precede the new one.
        assert_eq!(columns.get(999_999, a, 1), Slot::Value(&[3.0]));
        write(&mut columns, 1_000_002, a, 6.0);
        assert_eq!(columns.get(999_999, a, 1), Slot::Evicted);
        assert_eq!(columns.get(1_000_000, a, 1), Slot::Value(&[5.0]));
        assert_eq!(columns.last_step(), Some(1_000_002));
    }
}
