//! The CSV export of a replenishment run (`GET /v1/replenishment?format=csv`).

use super::planning::Suggestion;

/// Header of the CSV export.
pub(crate) const CSV_HEADER: &str = "sku,site,model,history_days,available,mean_daily_demand,lead_time_demand,\
safety_stock,reorder_point,shortfall,days_of_cover,stockout_day,stockout_date,reorder_qty,basis,lead_time_days,\
lead_time_source,service_level,service_level_source,order_cycle_days,order_cycle_source,on_order,on_order_source,\
supplier,po_qty";

/// One CSV field, quoted (RFC 4180: inner quotes doubled) when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// The rows as CSV: [`CSV_HEADER`] then one line per row.
pub(crate) fn to_csv(rows: &[Suggestion]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    let opt = |v: Option<String>| v.unwrap_or_default();
    for r in rows {
        let fields = [
            csv_field(&r.sku),
            csv_field(&r.site),
            csv_field(&r.model),
            r.history_days.to_string(),
            r.available.to_string(),
            r.mean_daily_demand.to_string(),
            r.lead_time_demand.to_string(),
            r.safety_stock.to_string(),
            r.reorder_point.to_string(),
            r.shortfall.to_string(),
            opt(r.days_of_cover.map(|v| v.to_string())),
            opt(r.stockout_day.map(|v| v.to_string())),
            opt(r.stockout_date.clone()),
            r.reorder_qty.to_string(),
            r.basis.to_owned(),
            r.lead_time_days.to_string(),
            r.lead_time_source.to_owned(),
            r.service_level.to_string(),
            r.service_level_source.to_owned(),
            r.order_cycle_days.to_string(),
            r.order_cycle_source.to_owned(),
            r.on_order.to_string(),
            r.on_order_source.to_owned(),
            csv_field(r.supplier.as_deref().unwrap_or("")),
            r.po_qty.to_string(),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demand::history::{DAY_MS, DemandIndex};
    use crate::demand::stock::StockIndex;
    use crate::demand::test_support::{TODAY, run_default};

    #[test]
    fn csv_has_header_and_rows() {
        let mut idx = DemandIndex::new(TODAY);
        for d in 0..30u64 {
            idx.add_order("wh1", (TODAY - 30 + d) * DAY_MS, None, [("A", 3)]);
        }
        let run = run_default(&idx, &StockIndex::default());
        let csv = to_csv(&run.rows);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], CSV_HEADER);
        assert!(lines[1].starts_with("A,wh1,"), "{}", lines[1]);
        assert_eq!(lines[1].split(',').count(), CSV_HEADER.split(',').count());
        assert_eq!(csv_field("a,\"b"), "\"a,\"\"b\"");
    }
}
