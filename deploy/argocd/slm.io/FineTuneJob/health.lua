-- Argo CD health check for slm.io/v1alpha1 FineTuneJob (docs/gitops.md).
-- 1. the operator has not observed the latest spec (status.observedGeneration < metadata.generation,
--    or no status yet)                                   -> Progressing
-- 2. Failed=True                                         -> Degraded
-- 3. Promoted=True, or Trained=True without spec.promote -> Healthy
-- 4. Promoted=False with a final reason: RolledBack (a replica on the new weights failed, the deployment was
--    rolled back) or GateNotMet (the evaluation gate was not met) -> Degraded; Superseded (a newer FineTuneJob
--    promotes onto the same deployment) or Replaced (someone changed what it serves since) -> Healthy
-- 5. otherwise                                           -> Progressing, with the message of the first
--    step that is not done (Sanitized, Trained, Evaluated, then Promoted when spec.promote is set)
local hs = {}

local function condition(type_)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local function is_true(type_)
  local c = condition(type_)
  return c ~= nil and c.status == "True"
end

local function observed(generation)
  if obj.status == nil then
    return false
  end
  local seen = obj.status.observedGeneration
  if seen ~= nil then
    return seen >= generation
  end
  local ready = condition("Ready")
  return ready ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration >= generation
end

local generation = obj.metadata.generation or 1
if not observed(generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. string.format("%d", generation)
  return hs
end

if is_true("Failed") then
  hs.status = "Degraded"
  hs.message = text(condition("Failed"), "the training Job failed")
  return hs
end

local promote = obj.spec ~= nil and obj.spec.promote ~= nil
if is_true("Promoted") or (is_true("Trained") and not promote) then
  hs.status = "Healthy"
  if promote then
    hs.message = text(condition("Promoted"), "promoted")
  else
    hs.message = text(condition("Trained"), "trained")
  end
  return hs
end

local promoted = condition("Promoted")
if promote and promoted ~= nil and promoted.status == "False" then
  if promoted.reason == "RolledBack" or promoted.reason == "GateNotMet" then
    hs.status = "Degraded"
    if promoted.reason == "GateNotMet" then
      hs.message = text(condition("Evaluated"), text(promoted, "the evaluation gate was not met"))
    else
      hs.message = text(promoted, "rolled back")
    end
    return hs
  end
  if promoted.reason == "Superseded" or promoted.reason == "Replaced" then
    hs.status = "Healthy"
    hs.message = text(promoted, promoted.reason)
    return hs
  end
end

hs.status = "Progressing"
hs.message = "waiting for the operator to start the training Job"
local steps = { "Sanitized", "Trained", "Evaluated" }
if promote then
  table.insert(steps, "Promoted")
end
for _, step in ipairs(steps) do
  local c = condition(step)
  if c ~= nil and c.status ~= "True" then
    hs.message = text(c, step .. " is " .. c.status)
    return hs
  end
end
return hs
