// The classic rate-limited API: express, and a per-client fixed window in
// Redis with INCR and EXPIRE (the pattern of countless tutorials and of
// rate-limiter-flexible's simplest store), behind a trusted proxy. Run by
// PM2 in cluster mode (ecosystem.config.js) for bench/speed.sh.
//
//   PORT, REDIS_URL, LIMIT (per minute, default far above any run)
'use strict';
const express = require('express');
const Redis = require('ioredis');

const redis = new Redis(process.env.REDIS_URL || 'redis://127.0.0.1:6379/0');
const limit = Number(process.env.LIMIT || 1000000000);
const app = express();
app.set('trust proxy', 'loopback');
app.disable('x-powered-by');

app.use(async (req, res, next) => {
  const key = `seed:${req.ip}`;
  try {
    const count = await redis.incr(key);
    if (count === 1) await redis.expire(key, 60);
    res.set('X-RateLimit-Limit', String(limit));
    res.set('X-RateLimit-Remaining', String(Math.max(0, limit - count)));
    if (count > limit) {
      res.status(429).send('Too Many Requests');
      return;
    }
    next();
  } catch (e) {
    next(e);
  }
});

app.get('/api/hello', (req, res) => {
  res.json({ message: 'hello' });
});

app.listen(Number(process.env.PORT || 3000), '127.0.0.1');
