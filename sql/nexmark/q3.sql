-- Nexmark Q3: local item suggestion. Sellers in Oregon, Idaho or California with an auction in
-- category 10: a stream-stream join on the seller, unbounded in time.
CREATE MATERIALIZED VIEW nexmark_q3 AS
SELECT p.name, p.city, p.state, a.id
FROM auction AS a
JOIN person AS p ON a.seller = p.id
WHERE a.category = 10 AND (p.state = 'or' OR p.state = 'id' OR p.state = 'ca');
