-- Nexmark Q4: average closing price per category. The highest bid of each auction while it
-- was open, averaged per category: an aggregate over an aggregate over a join, with
-- retractions as auctions' maxima rise.
CREATE MATERIALIZED VIEW nexmark_q4 AS
SELECT q.category, avg(q.final) AS avg
FROM (
    SELECT max(b.price) AS final, a.category
    FROM auction a
    JOIN bid b ON a.id = b.auction
    WHERE b.date_time BETWEEN a.date_time AND a.expires
    GROUP BY a.id, a.category
) q
GROUP BY q.category;
