-- EddyDB demo, step 3: machine learning on the live auctions. Wait until the auction stream
-- has a few hundred rows (about ten seconds after step 1) before running this file.
--
-- A linear regression learns an auction's reserve price from its opening bid. It refits every
-- minute on the newest ten minutes of auctions and serves each new version at once.
CREATE MODEL IF NOT EXISTS reserve_price PREDICT reserve USING linear_regression
WITH (mode = 'windowed', window = '10 minutes', retrain_every = '1 minute',
      promote = 'always', time_column = 'date_time')
AS SELECT initial_bid, reserve, date_time FROM auction;

-- Predicted against actual reserve prices per minute, in dollars, with the mean error.
CREATE MATERIALIZED VIEW IF NOT EXISTS reserve_predictions AS
SELECT window_start, count(*) AS auctions, avg(reserve) / 100.0 AS actual_reserve,
       avg(PREDICT(reserve_price, initial_bid)) / 100.0 AS predicted_reserve,
       ML_MAE(reserve, PREDICT(reserve_price, initial_bid)) / 100.0 AS mean_abs_error
FROM TUMBLE(auction, date_time, INTERVAL '1' MINUTE)
GROUP BY window_start;

-- Drift of the opening bids against the training distribution, per minute.
CREATE MODEL MONITOR IF NOT EXISTS reserve_drift ON MODEL reserve_price FROM auction
WITH (window = '1 minute', on_drift = 'alert');
