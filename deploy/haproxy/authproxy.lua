-- authproxy's forward-auth check for HAProxy 2.5 and later (core.httpclient), as an http-request action:
--
--     lua-load /etc/haproxy/authproxy.lua
--     http-request lua.authproxy http://127.0.0.1:4180/oauth2/auth/redirect
--
-- It asks authproxy whether the request may pass, sending what authproxy needs to judge it: the original
-- method, scheme, host and URI (X-Forwarded-*, believed from trusted_proxies only), the cookies, Accept,
-- Authorization (an API client's bearer token) and the browser's Sec-Fetch-* and X-Requested-With (a page
-- load gets a redirect to sign in, anything else a 401). The answer is left in transaction variables for
-- the rules that follow: txn.authproxy_status (202 pass, 302 sign in, 401, 403, 0 when authproxy could not
-- be asked), txn.authproxy_location, and txn.authproxy_user, _email, _groups and _preferred_username.
-- Written for this repository; tested by tests/integration/test_ingress.py against HAProxy 2.6.

local forwarded = { "cookie", "accept", "authorization", "user-agent", "x-requested-with",
                    "sec-fetch-mode", "sec-fetch-dest", "sec-fetch-site" }
local answered = { location = "location", ["x-auth-request-user"] = "user",
                   ["x-auth-request-email"] = "email", ["x-auth-request-groups"] = "groups",
                   ["x-auth-request-preferred-username"] = "preferred_username" }

local function first(values)
  if values == nil then return nil end
  return values[0] or values[1]
end

local function check(txn, url)
  local request = txn.http:req_get_headers()
  local headers = {
    ["x-forwarded-method"] = { txn.sf:method() },
    ["x-forwarded-proto"] = { (txn.sf:ssl_fc() == true or txn.sf:ssl_fc() == 1) and "https" or "http" },
    ["x-forwarded-host"] = { first(request["host"]) or "" },
    ["x-forwarded-uri"] = { txn.sf:url() },
  }
  for _, name in ipairs(forwarded) do
    local value = first(request[name])
    if value ~= nil then headers[name] = { value } end
  end
  for _, suffix in pairs(answered) do txn:set_var("txn.authproxy_" .. suffix, "") end
  local ok, response = pcall(function()
    return core.httpclient():get({ url = url, headers = headers, timeout = 10000 })
  end)
  if not ok or response == nil or response.status == nil then
    txn:set_var("txn.authproxy_status", 0)          -- authproxy could not be asked: the rules refuse
    return
  end
  txn:set_var("txn.authproxy_status", response.status)
  for name, suffix in pairs(answered) do
    local value = first((response.headers or {})[name])
    if value ~= nil then txn:set_var("txn.authproxy_" .. suffix, value) end
  end
end

core.register_action("authproxy", { "http-req" }, check, 1)
