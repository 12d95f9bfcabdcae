//! How many subscriptions each department has open, bounded per department. A slot is held by the
//! subscription's stream and given back when the stream is dropped, however it ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Open subscriptions per department, at most `limit` each.
#[derive(Debug, Clone)]
pub struct SubscriptionSlots {
    limit: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// A department already holds every slot it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotsTaken {
    /// The department's own open subscriptions.
    pub open: usize,
    pub limit: usize,
}

impl SubscriptionSlots {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Arc::default(),
        }
    }

    /// A slot for one more subscription of `department_code`, unless it has `limit` open.
    pub fn try_acquire(&self, department_code: &str) -> Result<SubscriptionSlot, SlotsTaken> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.get(department_code).copied().unwrap_or(0);
        if count >= self.limit {
            return Err(SlotsTaken {
                open: count,
                limit: self.limit,
            });
        }
        open.insert(department_code.to_string(), count + 1);
        Ok(SubscriptionSlot {
            open: self.open.clone(),
            department_code: department_code.to_string(),
        })
    }

    /// The department's open subscriptions.
    pub fn open(&self, department_code: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(department_code).copied().unwrap_or(0)
    }

    /// Departments with at least one open subscription.
    pub fn departments(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One open subscription's place; dropping it frees the place.
#[derive(Debug)]
pub struct SubscriptionSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    department_code: String,
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.department_code) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // nothing is kept for a department without subscriptions
                open.remove(&self.department_code);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_department_has_its_own_limit_and_slots_come_back_on_drop() {
        let slots = SubscriptionSlots::new(2);
        let first = slots.try_acquire("zw-sanitation").expect("first");
        let second = slots.try_acquire("zw-sanitation").expect("second");
        assert_eq!(
            slots.try_acquire("zw-sanitation").map(drop),
            Err(SlotsTaken { open: 2, limit: 2 })
        );
        let other = slots.try_acquire("zw-housing").expect("another department");
        assert_eq!(slots.open("zw-sanitation"), 2);
        assert_eq!(slots.open("zw-housing"), 1);

        drop(first);
        assert_eq!(slots.open("zw-sanitation"), 1);
        let third = slots.try_acquire("zw-sanitation").expect("a freed slot");
        drop((second, third, other));
        assert_eq!(slots.open("zw-sanitation"), 0);
        assert_eq!(slots.departments(), 0, "nothing kept after the last close");
    }

    #[test]
    fn many_acquisitions_never_exceed_the_limit() {
        let slots = SubscriptionSlots::new(8);
        let mut held = Vec::new();
        let mut refused = 0;
        for attempt in 0..1000 {
            match slots.try_acquire("zw-fire-rescue") {
                Ok(slot) => held.push(slot),
                Err(taken) => {
                    assert_eq!(taken, SlotsTaken { open: 8, limit: 8 });
                    refused += 1;
                }
            }
            if attempt % 100 == 99 {
                held.truncate(held.len() / 2);
            }
            assert!(slots.open("zw-fire-rescue") <= 8);
        }
        assert!(refused > 900, "{refused}");
        drop(held);
        assert_eq!(slots.departments(), 0);
    }
}
