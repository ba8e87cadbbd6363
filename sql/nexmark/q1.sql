-- Nexmark Q1: currency conversion. Each bid's price in euros.
CREATE MATERIALIZED VIEW nexmark_q1 AS
SELECT auction, bidder, 0.908 * price AS price, date_time
FROM bid;
