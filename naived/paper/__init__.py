"""The paper exchange: Binance's spot REST API, user data and market streams on loopback, as its own process.

`main` runs the process (`main.run`: for naived's root and for `naived paper-exchange`) and puts
these together: `http` (the HTTP/1.1 server and its gate), `exchange` (the endpoints: routing,
weights, signature checks, faults), which read requests with `params` (parameters → typed
values, Binance's errors), check them with `auth` (API key, signature), answer in `shapes`
(Binance's JSON), count them in `usage` (request weight) and inject `faults`; `book` keeps
orders, fills and balances (matching, SQLite); `feed` brings the public trades the book matches
against; `userstream` serves the account's user data stream (listen keys, executionReport,
outboundAccountPosition) and, on its port, `marketstream` Binance's market data streams (trade,
bookTicker, kline; raw and combined).
"""
