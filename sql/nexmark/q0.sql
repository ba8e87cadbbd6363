-- Nexmark Q0: pass-through. Every bid as it arrives; measures the cost of moving rows.
CREATE MATERIALIZED VIEW nexmark_q0 AS
SELECT auction, bidder, price, date_time
FROM bid;
