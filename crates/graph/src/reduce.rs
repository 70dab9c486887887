//! Reducers for [`GraphState::merge`](super::GraphState::merge): how one field takes a
//! node's update. An update field is an `Option`: `None` leaves the field alone.

/// Appends the update's items (message lists, logs).
pub fn append<T>(field: &mut Vec<T>, update: Option<Vec<T>>) {
    if let Some(items) = update {
        field.extend(items);
    }
}

/// Replaces the value (the last write wins).
pub fn last<T>(field: &mut T, update: Option<T>) {
    if let Some(value) = update {
        *field = value;
    }
}

/// Adds the update (counters).
pub fn add<T: std::ops::AddAssign>(field: &mut T, update: Option<T>) {
    if let Some(value) = update {
        *field += value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reducers_leave_fields_alone_on_none() {
        let mut v = vec![1];
        append(&mut v, Some(vec![2, 3]));
        append(&mut v, None);
        assert_eq!(v, [1, 2, 3]);
        let mut s = "a".to_string();
        last(&mut s, None);
        assert_eq!(s, "a");
        last(&mut s, Some("b".into()));
        assert_eq!(s, "b");
        let mut n = 1u32;
        add(&mut n, Some(2));
        add(&mut n, None);
        assert_eq!(n, 3);
    }
}
