--
-- PostgreSQL database dump
--

\restrict iql1OYr0hGCuyUg88q89IhV4oI26h8skOHfgQo0gTw9ymGo6Cqc6Vyrt1NW5D3G

-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: files; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.files (
    id character varying(40) NOT NULL,
    name character varying(255) NOT NULL,
    content_type character varying(255) NOT NULL,
    size integer NOT NULL,
    sha256 character varying(64) NOT NULL,
    metadata json NOT NULL,
    created_at double precision NOT NULL,
    data bytea NOT NULL,
    tenant character varying(64)
);


--
-- Name: image_urls; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.image_urls (
    token character varying(64) NOT NULL,
    name character varying(64) NOT NULL,
    content_type character varying(64) NOT NULL,
    created_at double precision NOT NULL,
    data bytea NOT NULL
);


--
-- Name: outputs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.outputs (
    prediction_id character varying(40) NOT NULL,
    index integer NOT NULL,
    token character varying(64) NOT NULL,
    name character varying(64) NOT NULL,
    content_type character varying(64) NOT NULL,
    data bytea NOT NULL
);


--
-- Name: predictions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.predictions (
    number integer NOT NULL,
    id character varying(40) NOT NULL,
    model character varying(200) NOT NULL,
    version character varying(200) NOT NULL,
    input json NOT NULL,
    status character varying(16) NOT NULL,
    logs text NOT NULL,
    error text,
    metrics json,
    output_count integer,
    created_at double precision NOT NULL,
    started_at double precision,
    completed_at double precision,
    webhook text,
    webhook_events_filter json,
    claimed_by character varying(64),
    origin character varying(300),
    cancel_requested boolean NOT NULL,
    tenant character varying(64),
    claimed_at double precision
);


--
-- Name: predictions_number_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.predictions_number_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: predictions_number_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.predictions_number_seq OWNED BY public.predictions.number;


--
-- Name: previews; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.previews (
    prediction_id character varying(40) NOT NULL,
    stage character varying(16) NOT NULL,
    step integer NOT NULL,
    total integer NOT NULL,
    data bytea NOT NULL
);


--
-- Name: replicas; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.replicas (
    name character varying(64) NOT NULL,
    beats integer NOT NULL,
    seen_at double precision NOT NULL
);


--
-- Name: settings; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.settings (
    name character varying(64) NOT NULL,
    value text NOT NULL
);


--
-- Name: predictions number; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.predictions ALTER COLUMN number SET DEFAULT nextval('public.predictions_number_seq'::regclass);


--
-- Data for Name: files; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.files VALUES ('ubvfk8ib64xv9436ncfv3bejjk', 'plans.txt', 'text/plain', 1500, 'f12f1e801d0fdc51000224670abf4d830e22b10d9ce2cb393df614b5cef2a3bd', '{"kind": "notes"}', 1796237575.5358245, '\x706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520706c616e73206f6620616c69636520', 'alice');


--
-- Data for Name: image_urls; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.image_urls VALUES ('elYCvnXuXAylZnpRqyXXV19jZ9oQME-e', 'image.png', 'image/png', 1796237575.5377069, '\x89504e470d0a1a0a0000000d4948445200000010000000100802000000909168360000001949444154789c63e4e23ac1400a602249f5a886510d434a0300d37800fcb98127e50000000049454e44ae426082');


--
-- Data for Name: outputs; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.outputs VALUES ('v1prediction00000000000001', 0, 'AUii0F9z4d-i7lFTJ-YT0M1F0xrTvS20', 'out-0.png', 'image/png', '\x89504e470d0a1a0a0000000d4948445200000010000000100802000000909168360000001949444154789c633cc1c5c5400a602249f5a886510d434a0300d4f400fc847c321d0000000049454e44ae426082');
INSERT INTO public.outputs VALUES ('v1prediction00000000000001', 1, 'emxfCPYah5tb0qf114Ja0OgUQ8IIVJr7', 'out-1.png', 'image/png', '\x89504e470d0a1a0a0000000d4948445200000010000000100802000000909168360000001949444154789c63e43ac1c5400a602249f5a886510d434a0300d43600fc893ff9d00000000049454e44ae426082');


--
-- Data for Name: predictions; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.predictions VALUES (1, 'v1prediction00000000000001', 'stability-ai/sdxl', '39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b', '{"prompt": "prediction 1", "width": 256, "height": 256}', 'succeeded', 'step 1/2
', NULL, '{"predict_time": 1.5}', 2, 1796237575.4957623, 1796237575.5015483, 1796237575.5119402, NULL, NULL, NULL, 'http://127.0.0.1:8000', false, 'alice', 1796237575.4993863);
INSERT INTO public.predictions VALUES (2, 'v1prediction00000000000002', 'stability-ai/sdxl', '39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b', '{"prompt": "prediction 2", "width": 256, "height": 256}', 'failed', '', 'the job failed on purpose', 'null', NULL, 1796237575.521188, NULL, 1796237575.5244899, NULL, NULL, NULL, 'http://127.0.0.1:8000', false, 'bob', 1796237575.5237353);
INSERT INTO public.predictions VALUES (3, 'v1prediction00000000000003', 'stability-ai/sdxl', '39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b', '{"prompt": "prediction 3", "width": 256, "height": 256}', 'starting', '', NULL, NULL, NULL, 1796237575.5264816, NULL, NULL, 'https://example.com/hook', '["completed"]', NULL, 'http://127.0.0.1:8000', false, 'alice', NULL);
INSERT INTO public.predictions VALUES (4, 'v1prediction00000000000004', 'stability-ai/sdxl', '39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b', '{"prompt": "prediction 4", "width": 256, "height": 256}', 'starting', '', NULL, NULL, NULL, 1796237575.5286307, NULL, NULL, NULL, NULL, NULL, 'http://127.0.0.1:8000', false, NULL, NULL);


--
-- Data for Name: previews; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: replicas; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: settings; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.settings VALUES ('webhook_secret', 'whsec_dGVzdGZpeHR1cmU=');
INSERT INTO public.settings VALUES ('tenant_salt', 'salt1');


--
-- Name: predictions_number_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.predictions_number_seq', 4, true);


--
-- Name: files files_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.files
    ADD CONSTRAINT files_pkey PRIMARY KEY (id);


--
-- Name: image_urls image_urls_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.image_urls
    ADD CONSTRAINT image_urls_pkey PRIMARY KEY (token);


--
-- Name: outputs outputs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.outputs
    ADD CONSTRAINT outputs_pkey PRIMARY KEY (prediction_id, index);


--
-- Name: outputs outputs_token_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.outputs
    ADD CONSTRAINT outputs_token_key UNIQUE (token);


--
-- Name: predictions predictions_id_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.predictions
    ADD CONSTRAINT predictions_id_key UNIQUE (id);


--
-- Name: predictions predictions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.predictions
    ADD CONSTRAINT predictions_pkey PRIMARY KEY (number);


--
-- Name: previews previews_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.previews
    ADD CONSTRAINT previews_pkey PRIMARY KEY (prediction_id);


--
-- Name: replicas replicas_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.replicas
    ADD CONSTRAINT replicas_pkey PRIMARY KEY (name);


--
-- Name: settings settings_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.settings
    ADD CONSTRAINT settings_pkey PRIMARY KEY (name);


--
-- Name: ix_predictions_status; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_predictions_status ON public.predictions USING btree (status);


--
-- Name: ix_predictions_tenant; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_predictions_tenant ON public.predictions USING btree (tenant);


--
-- PostgreSQL database dump complete
--

\unrestrict iql1OYr0hGCuyUg88q89IhV4oI26h8skOHfgQo0gTw9ymGo6Cqc6Vyrt1NW5D3G

