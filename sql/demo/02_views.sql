-- EddyDB demo, step 2: live views over the auction site. Each is maintained incrementally as
-- events arrive: the minute in progress is there and grows; a window is final once the stream's
-- watermark (eddy_catalog.materialized_views.watermark) has passed its end.

-- Bids per minute, with the average and top price in dollars (prices are in cents).
CREATE MATERIALIZED VIEW IF NOT EXISTS bids_per_minute AS
SELECT window_start, window_end, count(*) AS bids, avg(price) / 100.0 AS avg_price,
       max(price) / 100.0 AS max_price
FROM TUMBLE(bid, date_time, INTERVAL '1' MINUTE)
GROUP BY window_start, window_end;

-- The busiest auctions of each minute (those with at least 10 bids).
CREATE MATERIALIZED VIEW IF NOT EXISTS top_auctions AS
SELECT window_start, window_end, auction, count(*) AS bids, max(price) / 100.0 AS top_price
FROM TUMBLE(bid, date_time, INTERVAL '1' MINUTE)
GROUP BY window_start, window_end, auction
HAVING count(*) >= 10;

-- A stream-table join: auctions opened per minute and category, named by the category table.
CREATE MATERIALIZED VIEW IF NOT EXISTS auctions_per_category AS
SELECT a.window_start, c.name AS category, count(*) AS auctions,
       avg(a.initial_bid) / 100.0 AS avg_initial_bid
FROM TUMBLE(auction, date_time, INTERVAL '1' MINUTE) a
JOIN category c ON a.category = c.id
GROUP BY a.window_start, c.name;
