//! A set of offsets kept as disjoint half-open ranges. Acks mostly arrive in order, so the
//! acknowledged offsets above a partition's committed position stay a handful of ranges
//! however many events are acked.

use std::collections::BTreeMap;

use proteus_log::Offset;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetRanges {
    /// start → end (exclusive); ranges never touch or overlap.
    ranges: BTreeMap<Offset, Offset>,
}

impl OffsetRanges {
    pub fn new() -> Self {
        OffsetRanges::default()
    }

    pub fn from_ranges(ranges: impl IntoIterator<Item = (Offset, Offset)>) -> Self {
        let mut set = OffsetRanges::new();
        for (start, end) in ranges {
            set.insert_range(start, end);
        }
        set
    }

    pub fn from_range_list(ranges: &[(Offset, Offset)]) -> Self {
        OffsetRanges::from_ranges(ranges.iter().copied())
    }

    /// Adds every offset in `[start, end)`.
    pub fn insert_range(&mut self, start: Offset, end: Offset) {
        if start >= end {
            return;
        }
        let mut new_start = start;
        let mut new_end = end;
        // Absorb every range that overlaps or touches [start, end).
        let touching: Vec<(Offset, Offset)> = self
            .ranges
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            new_start = new_start.min(s);
            new_end = new_end.max(e);
        }
        self.ranges.insert(new_start, new_end);
    }

    pub fn contains(&self, offset: Offset) -> bool {
        self.ranges
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, &end)| offset < end)
    }

    /// Adds `offset`; returns false if it was already there.
    pub fn insert(&mut self, offset: Offset) -> bool {
        if self.contains(offset) {
            return false;
        }
        let mut start = offset;
        let mut end = offset + 1;
        if let Some((&before_start, &before_end)) = self.ranges.range(..offset).next_back()
            && before_end == offset
        {
            start = before_start;
        }
        if let Some(&after_end) = self.ranges.get(&end) {
            self.ranges.remove(&end);
            end = after_end;
        }
        self.ranges.insert(start, end);
        true
    }

    /// If a range starts at `position`, removes it and returns its end: the new committed
    /// position. Otherwise returns `position`.
    pub fn advance_from(&mut self, position: Offset) -> Offset {
        match self.ranges.remove(&position) {
            Some(end) => end,
            None => position,
        }
    }

    /// Drops every offset below `position`.
    pub fn remove_below(&mut self, position: Offset) {
        let below: Vec<(Offset, Offset)> = self
            .ranges
            .range(..position)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (start, end) in below {
            self.ranges.remove(&start);
            if end > position {
                self.ranges.insert(position, end);
            }
        }
    }

    pub fn ranges(&self) -> impl Iterator<Item = (Offset, Offset)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    pub fn len_ranges(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn behaves_like_a_set(offsets in proptest::collection::vec(0u64..200, 0..300), cut in 0u64..200) {
            let mut ranges = OffsetRanges::new();
            let mut model = BTreeSet::new();
            for offset in offsets {
                if offset % 7 == 0 {
                    ranges.insert_range(offset, offset + 3);
                    model.extend(offset..offset + 3);
                } else {
                    prop_assert_eq!(ranges.insert(offset), model.insert(offset));
                }
            }
            ranges.remove_below(cut);
            model.retain(|&o| o >= cut);
            for offset in 0..210 {
                prop_assert_eq!(ranges.contains(offset), model.contains(&offset));
            }
            let mut previous_end = None;
            for (start, end) in ranges.ranges() {
                prop_assert!(start < end);
                if let Some(previous) = previous_end {
                    prop_assert!(previous < start, "ranges never touch");
                }
                previous_end = Some(end);
            }
        }
    }

    #[test]
    fn advance_consumes_a_leading_range() {
        let mut ranges = OffsetRanges::from_ranges([(3, 6), (8, 9)]);
        assert_eq!(ranges.advance_from(2), 2);
        assert_eq!(ranges.advance_from(3), 6);
        assert!(!ranges.contains(4));
        assert!(ranges.contains(8));
    }
}
