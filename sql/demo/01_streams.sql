-- EddyDB demo, step 1: an auction site that generates itself.
--
-- The built-in Nexmark generator (connector = 'nexmark') feeds two streams: auctions being
-- opened and bids on them, 1,000 events a second in all (about 60 auctions and 920 bids), paced
-- by the wall clock. A small table names the five auction categories for a stream-table join.
-- Run with: psql -h 127.0.0.1 -p 5433 eddy -f sql/demo/01_streams.sql (or start the server
-- with --demo, which runs every file of this directory in order). Every statement can run
-- again: what exists already is left as it is.
CREATE STREAM IF NOT EXISTS bid (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
WITH (connector = 'nexmark', event_type = 'bid', rate = 1000);

CREATE STREAM IF NOT EXISTS auction (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
WITH (connector = 'nexmark', event_type = 'auction', rate = 1000);

CREATE TABLE IF NOT EXISTS category (id BIGINT PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO category VALUES (10, 'art'), (11, 'books'), (12, 'cars'), (13, 'electronics'),
                            (14, 'garden')
ON CONFLICT DO NOTHING;
